//! A fake child for the actor's unit tests: `launch` starts a task, not a process.
//! The task speaks the worker protocol over the socket the actor hands it (HELLO,
//! READY with its methods, one reply per request) and acts on each request as its
//! method says; a signal to its "group" ends it with the matching wait status. Its
//! batched method `upper` (at most 4 per batch) answers each request with its body
//! in capitals; a batch holding a body "segv" dies of SIGSEGV, one holding "hang"
//! never answers.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command as StdCommand, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_protocol::Frame;
use paddock_protocol::io::{FrameReader, write_frame};
use tokio::sync::{mpsc, oneshot};

use super::launch::{BoxFuture, Launcher, Output, Proc};
use crate::daemon::logsink::Stream;

/// What the fake worker does with a request, by its method's name.
#[derive(Debug, Clone)]
pub enum Act {
    /// Answers at once with the request's body.
    Echo,
    /// Answers with the body after this long.
    Slow(Duration),
    /// Never answers.
    Hang,
    /// Dies of this signal (SIGSEGV: 11).
    Die(i32),
    /// Answers with a request id it was not given.
    WrongId,
}

/// The methods every fake worker announces.
pub fn methods() -> BTreeMap<&'static str, Act> {
    BTreeMap::from([
        ("echo", Act::Echo),
        ("slow", Act::Slow(Duration::from_millis(150))),
        ("hang", Act::Hang),
        ("segv", Act::Die(11)),
        ("wrong_id", Act::WrongId),
    ])
}

/// Starts fake workers and counts them.
#[derive(Default)]
pub struct FakeLauncher {
    pub launched: AtomicI32,
    /// Every signal sent to a fake group: (pid, signal).
    pub signals: Arc<Mutex<Vec<(i32, i32)>>>,
}

impl Launcher for FakeLauncher {
    fn launch<'a>(
        &'a self,
        _command: StdCommand,
        fd: Option<BorrowedFd<'a>>,
    ) -> BoxFuture<'a, io::Result<Box<dyn Proc>>> {
        Box::pin(async move {
            let n = self.launched.fetch_add(1, Ordering::SeqCst) + 1;
            // Far above any real pid: nothing real can be hit by mistake.
            let pid = 0x3f00_0000 + n;
            let fd = fd.ok_or_else(|| io::Error::other("a fake worker needs its socket"))?;
            let sock = std::os::unix::net::UnixStream::from(fd.try_clone_to_owned()?);
            sock.set_nonblocking(true)?;
            let sock = tokio::net::UnixStream::from_std(sock)?;
            let (signal_tx, signal_rx) = mpsc::unbounded_channel();
            let (exit_tx, exit) = oneshot::channel();
            tokio::spawn(async move {
                let status = worker(sock, pid, signal_rx).await;
                let _ = exit_tx.send(status);
            });
            Ok(Box::new(FakeProc {
                pid,
                signal_tx,
                exit,
                signals: self.signals.clone(),
            }) as Box<dyn Proc>)
        })
    }
}

struct FakeProc {
    pid: i32,
    signal_tx: mpsc::UnboundedSender<i32>,
    exit: oneshot::Receiver<ExitStatus>,
    signals: Arc<Mutex<Vec<(i32, i32)>>>,
}

impl Proc for FakeProc {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn signal_group(&self, signal: i32) {
        self.signals.lock().unwrap().push((self.pid, signal));
        let _ = self.signal_tx.send(signal);
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>> {
        Box::pin(async move {
            (&mut self.exit)
                .await
                .map_err(|_| io::Error::other("the fake worker's task vanished"))
        })
    }

    fn take_output(&mut self) -> Vec<(Stream, Output)> {
        vec![]
    }

    fn reap_group(&mut self, _limit: Duration) -> BoxFuture<'_, Vec<i32>> {
        Box::pin(async { vec![] })
    }

    fn oom_killed(&self) -> bool {
        false
    }
}

/// A wait status: killed by `signal`.
fn killed(signal: i32) -> ExitStatus {
    ExitStatus::from_raw(signal)
}

/// The fake worker's life; its wait status.
async fn worker(
    sock: tokio::net::UnixStream,
    pid: i32,
    mut signals: mpsc::UnboundedReceiver<i32>,
) -> ExitStatus {
    let (read, mut write) = sock.into_split();
    let mut frames = FrameReader::new(read, 1 << 20);
    let acts = methods();
    let mut methods: Vec<&str> = acts.keys().copied().collect();
    methods.push("upper");
    let ready = serde_json::json!({
        "methods": methods,
        "idempotent": ["echo", "upper"],
        "batch": {"upper": {"max_size": 4, "max_wait_ms": 0}},
    });
    let hello = [
        Frame::Hello {
            version: paddock_protocol::VERSION,
            pid: pid as u32,
            meta: "{}".into(),
        },
        Frame::Ready {
            json: ready.to_string(),
        },
    ];
    for f in &hello {
        if write_frame(&mut write, f).await.is_err() {
            return killed(9);
        }
    }
    loop {
        let frame = tokio::select! {
            sig = signals.recv() => return killed(sig.unwrap_or(9)),
            f = frames.next() => f,
        };
        let req = match frame {
            Ok(Frame::Request(req)) => req,
            Ok(Frame::Batch { items, .. }) => {
                let bodies: Vec<&[u8]> = items.iter().map(|i| &i.body[..]).collect();
                if bodies.contains(&&b"segv"[..]) {
                    return killed(11);
                }
                if bodies.contains(&&b"hang"[..]) {
                    return killed(signals.recv().await.unwrap_or(9));
                }
                let results = items
                    .into_iter()
                    .map(|i| paddock_protocol::BatchResult {
                        id: i.id,
                        outcome: paddock_protocol::ItemOutcome::Ok {
                            content_type: i.content_type,
                            body: i.body.to_ascii_uppercase(),
                        },
                    })
                    .collect();
                if write_frame(&mut write, &Frame::BatchReply { results })
                    .await
                    .is_err()
                {
                    return killed(9);
                }
                continue;
            }
            // The daemon closed the socket: exit as the SDK does.
            _ => return ExitStatus::from_raw(0),
        };
        let reply = |id| Frame::Reply {
            id,
            content_type: req.content_type.clone(),
            body: req.body.clone(),
        };
        let answer = match acts.get(req.method.as_str()) {
            Some(Act::Echo) => reply(req.id),
            Some(Act::Slow(d)) => {
                tokio::select! {
                    sig = signals.recv() => return killed(sig.unwrap_or(9)),
                    _ = tokio::time::sleep(*d) => reply(req.id),
                }
            }
            Some(Act::Hang) => return killed(signals.recv().await.unwrap_or(9)),
            Some(Act::Die(sig)) => return killed(*sig),
            Some(Act::WrongId) => reply(req.id ^ 0xffff),
            None => Frame::Error {
                id: req.id,
                message: format!("no method {}", req.method),
                traceback: String::new(),
            },
        };
        if write_frame(&mut write, &answer).await.is_err() {
            return killed(9);
        }
    }
}
