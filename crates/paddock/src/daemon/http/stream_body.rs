//! The HTTP body of a streamed answer: chunked transfer encoding by default,
//! Server-Sent Events when the client asked for `text/event-stream`.
//!
//! Invariants:
//! - a chunk goes out as soon as the worker sent it; chunks that arrived while the
//!   client lagged go out together, in one write of at most `COALESCE` bytes;
//! - a stream that failed never ends like a complete one: a chunked body is cut off
//!   (no final zero-length chunk), an SSE stream ends with `event: error`; only a
//!   complete stream ends with the chunked terminator or `event: done`.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use http_body::Frame;
use tokio::sync::mpsc;

use crate::daemon::messages::StreamItem;

/// The most bytes gathered into one write when chunks are waiting.
const COALESCE: usize = 64 * 1024;

pub struct StreamBody {
    items: mpsc::Receiver<StreamItem>,
    sse: bool,
    /// The end, taken while gathering chunks: sent on the next poll.
    end: Option<StreamItem>,
    finished: bool,
    /// Data went out since the body last answered `Pending`: still in the
    /// connection's write buffer, maybe with the answer's head.
    unflushed: bool,
}

impl StreamBody {
    pub fn new(items: mpsc::Receiver<StreamItem>, sse: bool) -> StreamBody {
        StreamBody {
            items,
            sse,
            end: None,
            finished: false,
            unflushed: false,
        }
    }

    /// One chunk as SSE: a `data:` line per line of its text, then a blank line.
    fn sse_event(out: &mut Vec<u8>, chunk: &[u8]) {
        let text = String::from_utf8_lossy(chunk);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        for line in text.split('\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
    }

    fn add(&self, out: &mut Vec<u8>, chunk: &[u8]) {
        if self.sse {
            Self::sse_event(out, chunk);
        } else {
            out.extend_from_slice(chunk);
        }
    }

    /// The stream's end: its last bytes (SSE), or the error that cuts it off.
    fn finish(&mut self, end: Option<StreamItem>) -> Option<Result<Frame<Bytes>, std::io::Error>> {
        self.finished = true;
        let (message, cause) = match end {
            Some(StreamItem::Done) => {
                return self
                    .sse
                    .then(|| Ok(Frame::data(Bytes::from_static(b"event: done\ndata: \n\n"))));
            }
            Some(StreamItem::Failed { message, cause }) => (message, cause),
            Some(StreamItem::Chunk(_)) | None => (
                "the stream was cut off before its end".to_string(),
                serde_json::json!({"kind": "cut_off"}),
            ),
        };
        if self.sse {
            let data = serde_json::json!({"error": message, "cause": cause});
            Some(Ok(Frame::data(Bytes::from(format!(
                "event: error\ndata: {data}\n\n"
            )))))
        } else {
            Some(Err(std::io::Error::other(message)))
        }
    }
}

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let end = match self.end.take() {
            Some(end) => Some(end),
            None => match self.items.poll_recv(cx) {
                Poll::Pending => {
                    self.unflushed = false; // the connection flushes when the body waits
                    return Poll::Pending;
                }
                Poll::Ready(None) => Some(StreamItem::Failed {
                    message: "the stream was cut off before its end".to_string(),
                    cause: serde_json::json!({"kind": "cut_off"}),
                }),
                Poll::Ready(Some(StreamItem::Chunk(c))) => {
                    self.unflushed = true;
                    return Poll::Ready(Some(Ok(self.gather(c))));
                }
                Poll::Ready(Some(end)) => Some(end),
            },
        };
        // A chunked stream that failed is cut off by an error, which drops the
        // connection at once: what is still in its write buffer (the head, the last
        // chunks) would be lost, and the client would see no answer at all. Wait one
        // turn first, so that it goes out.
        if !self.sse && self.unflushed && !matches!(end, Some(StreamItem::Done)) {
            self.unflushed = false;
            self.end = end;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.finish(end))
    }
}

impl StreamBody {
    /// `first`, and what else is already waiting, as one frame.
    fn gather(&mut self, first: Bytes) -> Frame<Bytes> {
        // What else is already waiting goes out with it.
        let mut out: Vec<u8> = Vec::new();
        match self.items.try_recv() {
            Ok(StreamItem::Chunk(next)) => {
                self.add(&mut out, &first);
                self.add(&mut out, &next);
            }
            Ok(end) => {
                self.end = Some(end);
                if !self.sse {
                    return Frame::data(first);
                }
                self.add(&mut out, &first);
                return Frame::data(Bytes::from(out));
            }
            Err(_) => {
                if !self.sse {
                    return Frame::data(first);
                }
                self.add(&mut out, &first);
                return Frame::data(Bytes::from(out));
            }
        }
        while out.len() < COALESCE {
            match self.items.try_recv() {
                Ok(StreamItem::Chunk(next)) => self.add(&mut out, &next),
                Ok(end) => {
                    self.end = Some(end);
                    break;
                }
                Err(_) => break,
            }
        }
        Frame::data(Bytes::from(out))
    }
}
