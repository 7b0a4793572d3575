//! Log capture: every worker's stdout and stderr, line by line, into
//! `logs/<service>.log` with a timestamp, the worker's index and the stream.
//!
//! One task per service owns its file (no locks): readers send lines to it. It
//! rotates by size (`log_max_size` × `log_max_files`) and keeps each worker's last
//! lines in memory, so that a failure report can show them without reading files.
//!
//! Invariant: a line longer than [`MAX_LINE`] is split, never buffered without bound.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};

pub const MAX_LINE: usize = 16 * 1024;
const TAIL: usize = 50;

#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Out,
    Err,
    /// paddock's own note about the worker (spawned, exited, killed).
    Paddock,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Out => "out",
            Stream::Err => "err",
            Stream::Paddock => "paddock",
        }
    }
}

enum Msg {
    Line {
        worker: u32,
        stream: Stream,
        text: String,
    },
    Tail {
        worker: u32,
        n: usize,
        reply: oneshot::Sender<Vec<String>>,
    },
}

/// A handle to one service's log task.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<Msg>,
}

struct Writer {
    service: String,
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    max_files: u32,
}

impl Writer {
    fn open(&mut self) {
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
    }

    fn rotate(&mut self) {
        self.file = None;
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.max_files > 1 {
            for i in (1..self.max_files - 1).rev() {
                let _ = std::fs::rename(name(i), name(i + 1));
            }
            let _ = std::fs::rename(&self.path, name(1));
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
        self.open();
    }

    fn write(&mut self, worker: u32, stream: Stream, text: &str) {
        let line = format!(
            "{} {}/{} {}| {}\n",
            crate::timefmt::now(),
            self.service,
            worker,
            stream.tag(),
            text
        );
        if self.size + line.len() as u64 > self.max_bytes && self.size > 0 {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut()
            && f.write_all(line.as_bytes()).is_ok()
        {
            self.size += line.len() as u64;
        }
    }
}

/// The whole lines at the front of `buf` (without their `\n` or `\r\n`), then
/// pieces of `MAX_LINE` bytes of a line that is still longer; what is left is the
/// start of a line yet to end.
fn take_lines(buf: &mut Vec<u8>) -> Vec<String> {
    let mut out = vec![];
    let mut start = 0;
    while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
        let end = start + pos;
        let line = buf[start..end]
            .strip_suffix(b"\r")
            .unwrap_or(&buf[start..end]);
        out.push(String::from_utf8_lossy(line).into_owned());
        start = end + 1;
    }
    buf.drain(..start);
    while buf.len() >= MAX_LINE {
        out.push(String::from_utf8_lossy(&buf[..MAX_LINE]).into_owned());
        buf.drain(..MAX_LINE);
    }
    out
}

impl LogSink {
    pub fn start(service: &str, dir: PathBuf, max_bytes: u64, max_files: u32) -> LogSink {
        let (tx, mut rx) = mpsc::channel::<Msg>(4096);
        let mut w = Writer {
            service: service.to_string(),
            path: dir.join(format!("{service}.log")),
            file: None,
            size: 0,
            max_bytes,
            max_files,
        };
        w.open();
        tokio::spawn(async move {
            let mut tails: HashMap<u32, VecDeque<String>> = HashMap::new();
            while let Some(msg) = rx.recv().await {
                match msg {
                    Msg::Line {
                        worker,
                        stream,
                        text,
                    } => {
                        w.write(worker, stream, &text);
                        if matches!(stream, Stream::Paddock) {
                            continue;
                        }
                        let t = tails.entry(worker).or_default();
                        if t.len() == TAIL {
                            t.pop_front();
                        }
                        t.push_back(text);
                    }
                    Msg::Tail { worker, n, reply } => {
                        let t = tails.get(&worker);
                        let lines = t
                            .map(|t| t.iter().skip(t.len().saturating_sub(n)).cloned().collect())
                            .unwrap_or_default();
                        let _ = reply.send(lines);
                    }
                }
            }
        });
        LogSink { tx }
    }

    /// Reads `reader` to its end, sending each line to the log.
    pub fn capture<R: AsyncRead + Unpin + Send + 'static>(
        &self,
        worker: u32,
        stream: Stream,
        mut reader: R,
    ) -> tokio::task::JoinHandle<()> {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            let mut chunk = vec![0u8; 8192];
            loop {
                let n = match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                if n == 0 {
                    if !buf.is_empty() {
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        let _ = tx
                            .send(Msg::Line {
                                worker,
                                stream,
                                text,
                            })
                            .await;
                    }
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                for text in take_lines(&mut buf) {
                    let line = Msg::Line {
                        worker,
                        stream,
                        text,
                    };
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
        })
    }

    /// Writes paddock's own note about a worker into the service's log.
    pub async fn note(&self, worker: u32, text: String) {
        let _ = self
            .tx
            .send(Msg::Line {
                worker,
                stream: Stream::Paddock,
                text,
            })
            .await;
    }

    /// Like [`LogSink::note`], from code that cannot wait: dropped only if the
    /// log's queue is full (4,096 lines behind).
    pub fn note_now(&self, worker: u32, text: String) {
        let _ = self.tx.try_send(Msg::Line {
            worker,
            stream: Stream::Paddock,
            text,
        });
    }

    /// The last `n` lines of a worker's output (paddock's notes excluded).
    pub async fn tail(&self, worker: u32, n: usize) -> Vec<String> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Tail { worker, n, reply }).await.is_err() {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_are_taken_whole_and_overlong_ones_in_pieces() {
        let mut buf = b"one\r\ntwo\nthr".to_vec();
        assert_eq!(super::take_lines(&mut buf), ["one", "two"]);
        assert_eq!(buf, b"thr");
        let mut long = vec![b'x'; super::MAX_LINE + 3];
        let out = super::take_lines(&mut long);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), super::MAX_LINE);
        assert_eq!(long.len(), 3);
    }
}
