//! The paddock worker protocol (version 6), specified in `docs/protocol.md`.
//!
//! Why a crate of its own: the protocol is the contract between the daemon and
//! workers written in any language; it must be testable (property tests, a fuzz
//! target) without the daemon.
//!
//! Invariants:
//! - a frame's declared length is checked against the maximum **before** anything is
//!   allocated for it;
//! - decoding never panics, whatever the input: every malformed input is an `Error`;
//! - request ids carry the worker's generation in their high 32 bits.

#![forbid(unsafe_code)]

#[cfg(feature = "tokio")]
pub mod io;

/// The protocol version this crate speaks.
pub const VERSION: u16 = 6;
/// The oldest version a worker may say in HELLO (version 2 only added a frame
/// that version-1 workers never send).
pub const MIN_VERSION: u16 = 1;
/// The default maximum frame size (type byte and payload), 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;
/// The descriptor number the worker's socket gets.
pub const WORKER_FD: i32 = 3;

pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const READY: u8 = 0x02;
    pub const SETUP_FAILED: u8 = 0x03;
    pub const FORK_WARNING: u8 = 0x04;
    pub const REQUEST: u8 = 0x10;
    pub const REPLY: u8 = 0x11;
    pub const ERROR: u8 = 0x12;
    pub const STREAM_START: u8 = 0x13;
    pub const CHUNK: u8 = 0x14;
    pub const STREAM_END: u8 = 0x15;
    pub const BAD_REQUEST: u8 = 0x16;
    pub const BATCH: u8 = 0x17;
    pub const BATCH_REPLY: u8 = 0x18;
    pub const REFUSED: u8 = 0x19;
    pub const SHUTDOWN: u8 = 0x20;
    pub const CANCEL: u8 = 0x21;
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u16,
        pid: u32,
        meta: String,
    },
    Ready {
        json: String,
    },
    SetupFailed {
        text: String,
    },
    /// The worker is forking with several OS threads (version 5): JSON.
    ForkWarning {
        json: String,
    },
    Request(Request),
    Reply {
        id: u64,
        content_type: String,
        body: Vec<u8>,
    },
    Error {
        id: u64,
        message: String,
        traceback: String,
    },
    /// The request was wrong (version 2): `message` is meant for the client.
    BadRequest {
        id: u64,
        message: String,
    },
    /// The handler refused the request with an HTTP status (400–599) and a
    /// message meant for the client (version 6).
    Refused {
        id: u64,
        status: u16,
        message: String,
    },
    /// Several requests for one method (version 3).
    Batch {
        method: String,
        items: Vec<BatchItem>,
    },
    /// One result per item of a batch (version 3).
    BatchReply {
        results: Vec<BatchResult>,
    },
    StreamStart {
        id: u64,
        content_type: String,
    },
    Chunk {
        id: u64,
        data: Vec<u8>,
    },
    StreamEnd {
        id: u64,
    },
    Shutdown,
    /// Nobody reads stream `id` any more (version 4).
    Cancel {
        id: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    pub deadline_ms: u32,
    pub method: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// One request of a BATCH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    pub id: u64,
    pub deadline_ms: u32,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// One item's result in a BATCH_REPLY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    pub id: u64,
    pub outcome: ItemOutcome,
}

/// How one item of a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// outcome 0: the answer.
    Ok { content_type: String, body: Vec<u8> },
    /// outcome 1: the handler refused this item with an HTTP status (400–599) and a
    /// message meant for the client.
    Refused { status: u16, message: String },
    /// outcome 2: the handler failed on this item (an unexpected exception).
    Failed { message: String, traceback: String },
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame (length 0)")]
    Empty,
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("truncated {0} frame")]
    Truncated(&'static str),
    #[error("{0} frame: text is not UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} frame: bytes left over after its last field")]
    Trailing(&'static str),
    #[error("{what} is {len} bytes, over the u16 limit of a str16 field")]
    FieldTooLong { what: &'static str, len: usize },
    #[error("{0} frame: {1}")]
    Invalid(&'static str, &'static str),
}

/// A request id: the worker's generation in the high half, a sequence number below.
pub fn request_id(generation: u32, seq: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(seq)
}

/// The generation a request id was issued to.
pub fn generation_of(id: u64) -> u32 {
    (id >> 32) as u32
}

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(Error::Truncated(self.what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn text(&self, b: &[u8]) -> Result<String, Error> {
        String::from_utf8(b.to_vec()).map_err(|_| Error::NotUtf8(self.what))
    }
    fn str16(&mut self) -> Result<String, Error> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        self.text(b)
    }
    /// A `u32` length, then that many bytes.
    fn bytes32(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) -> Result<(), Error> {
    let n = u32::try_from(b.len()).map_err(|_| Error::TooLarge {
        len: b.len(),
        max: u32::MAX as usize,
    })?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn put_count(out: &mut Vec<u8>, n: usize, what: &'static str) -> Result<(), Error> {
    let n = u16::try_from(n).map_err(|_| Error::FieldTooLong { what, len: n })?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn put_str16(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), Error> {
    let n = u16::try_from(s.len()).map_err(|_| Error::FieldTooLong { what, len: s.len() })?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

impl Frame {
    fn name(t: u8) -> &'static str {
        match t {
            kind::HELLO => "HELLO",
            kind::READY => "READY",
            kind::SETUP_FAILED => "SETUP_FAILED",
            kind::FORK_WARNING => "FORK_WARNING",
            kind::REQUEST => "REQUEST",
            kind::REPLY => "REPLY",
            kind::ERROR => "ERROR",
            kind::BAD_REQUEST => "BAD_REQUEST",
            kind::BATCH => "BATCH",
            kind::BATCH_REPLY => "BATCH_REPLY",
            kind::REFUSED => "REFUSED",
            kind::STREAM_START => "STREAM_START",
            kind::CHUNK => "CHUNK",
            kind::STREAM_END => "STREAM_END",
            kind::SHUTDOWN => "SHUTDOWN",
            kind::CANCEL => "CANCEL",
            _ => "unknown",
        }
    }

    /// This frame's type byte.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => kind::HELLO,
            Frame::Ready { .. } => kind::READY,
            Frame::SetupFailed { .. } => kind::SETUP_FAILED,
            Frame::ForkWarning { .. } => kind::FORK_WARNING,
            Frame::Request(_) => kind::REQUEST,
            Frame::Reply { .. } => kind::REPLY,
            Frame::Error { .. } => kind::ERROR,
            Frame::BadRequest { .. } => kind::BAD_REQUEST,
            Frame::Refused { .. } => kind::REFUSED,
            Frame::Batch { .. } => kind::BATCH,
            Frame::BatchReply { .. } => kind::BATCH_REPLY,
            Frame::StreamStart { .. } => kind::STREAM_START,
            Frame::Chunk { .. } => kind::CHUNK,
            Frame::StreamEnd { .. } => kind::STREAM_END,
            Frame::Shutdown => kind::SHUTDOWN,
            Frame::Cancel { .. } => kind::CANCEL,
        }
    }

    /// Decodes a frame body: the type byte and the payload (the length prefix
    /// already removed and checked).
    pub fn decode_body(body: &[u8]) -> Result<Frame, Error> {
        let (&t, payload) = body.split_first().ok_or(Error::Empty)?;
        let mut r = Reader {
            buf: payload,
            what: Frame::name(t),
        };
        let f = match t {
            kind::HELLO => {
                let version = r.u16()?;
                let pid = r.u32()?;
                let meta = r.rest();
                Frame::Hello {
                    version,
                    pid,
                    meta: r.text(meta)?,
                }
            }
            kind::READY => {
                let b = r.rest();
                Frame::Ready { json: r.text(b)? }
            }
            kind::SETUP_FAILED => Frame::SetupFailed {
                text: String::from_utf8_lossy(r.rest()).into_owned(),
            },
            kind::FORK_WARNING => {
                let b = r.rest();
                Frame::ForkWarning { json: r.text(b)? }
            }
            kind::REQUEST => Frame::Request(Request {
                id: r.u64()?,
                deadline_ms: r.u32()?,
                method: r.str16()?,
                content_type: r.str16()?,
                body: r.rest().to_vec(),
            }),
            kind::REPLY => Frame::Reply {
                id: r.u64()?,
                content_type: r.str16()?,
                body: r.rest().to_vec(),
            },
            kind::ERROR => {
                let id = r.u64()?;
                let n = r.u32()? as usize;
                let m = r.take(n)?;
                Frame::Error {
                    id,
                    message: String::from_utf8_lossy(m).into_owned(),
                    traceback: String::from_utf8_lossy(r.rest()).into_owned(),
                }
            }
            kind::BAD_REQUEST => {
                let id = r.u64()?;
                Frame::BadRequest {
                    id,
                    message: String::from_utf8_lossy(r.rest()).into_owned(),
                }
            }
            kind::REFUSED => {
                let id = r.u64()?;
                let status = r.u16()?;
                if !(400..=599).contains(&status) {
                    return Err(Error::Invalid(
                        "REFUSED",
                        "a refusal's status is not in 400..=599",
                    ));
                }
                Frame::Refused {
                    id,
                    status,
                    message: String::from_utf8_lossy(r.rest()).into_owned(),
                }
            }
            kind::BATCH => {
                let method = r.str16()?;
                let count = r.u16()?;
                if count == 0 {
                    return Err(Error::Invalid("BATCH", "a batch of no request"));
                }
                let mut items = Vec::with_capacity(usize::from(count).min(r.buf.len() / 18));
                for _ in 0..count {
                    items.push(BatchItem {
                        id: r.u64()?,
                        deadline_ms: r.u32()?,
                        content_type: r.str16()?,
                        body: r.bytes32()?.to_vec(),
                    });
                }
                Frame::Batch { method, items }
            }
            kind::BATCH_REPLY => {
                let count = r.u16()?;
                let mut results = Vec::with_capacity(usize::from(count).min(r.buf.len() / 9));
                for _ in 0..count {
                    let id = r.u64()?;
                    let outcome = match r.u8()? {
                        0 => ItemOutcome::Ok {
                            content_type: r.str16()?,
                            body: r.bytes32()?.to_vec(),
                        },
                        1 => {
                            let status = r.u16()?;
                            if !(400..=599).contains(&status) {
                                return Err(Error::Invalid(
                                    "BATCH_REPLY",
                                    "a refusal's status is not in 400..=599",
                                ));
                            }
                            let m = r.bytes32()?;
                            ItemOutcome::Refused {
                                status,
                                message: String::from_utf8_lossy(m).into_owned(),
                            }
                        }
                        2 => {
                            let m = r.bytes32()?;
                            let t = r.bytes32()?;
                            ItemOutcome::Failed {
                                message: String::from_utf8_lossy(m).into_owned(),
                                traceback: String::from_utf8_lossy(t).into_owned(),
                            }
                        }
                        _ => return Err(Error::Invalid("BATCH_REPLY", "unknown outcome")),
                    };
                    results.push(BatchResult { id, outcome });
                }
                Frame::BatchReply { results }
            }
            kind::STREAM_START => Frame::StreamStart {
                id: r.u64()?,
                content_type: r.str16()?,
            },
            kind::CHUNK => Frame::Chunk {
                id: r.u64()?,
                data: r.rest().to_vec(),
            },
            kind::STREAM_END => Frame::StreamEnd { id: r.u64()? },
            kind::SHUTDOWN => Frame::Shutdown,
            kind::CANCEL => Frame::Cancel { id: r.u64()? },
            other => return Err(Error::UnknownType(other)),
        };
        if !r.buf.is_empty() {
            return Err(Error::Trailing(Frame::name(t)));
        }
        Ok(f)
    }

    /// Encodes the frame with its length prefix.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = vec![0, 0, 0, 0, self.kind()];
        match self {
            Frame::Hello { version, pid, meta } => {
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&pid.to_be_bytes());
                out.extend_from_slice(meta.as_bytes());
            }
            Frame::Ready { json } => out.extend_from_slice(json.as_bytes()),
            Frame::SetupFailed { text } => out.extend_from_slice(text.as_bytes()),
            Frame::ForkWarning { json } => out.extend_from_slice(json.as_bytes()),
            Frame::Request(r) => {
                return encode_request(r.id, r.deadline_ms, &r.method, &r.content_type, &r.body);
            }
            Frame::Reply {
                id,
                content_type,
                body,
            } => {
                out.extend_from_slice(&id.to_be_bytes());
                put_str16(&mut out, content_type, "content type")?;
                out.extend_from_slice(body);
            }
            Frame::Error {
                id,
                message,
                traceback,
            } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&(message.len() as u32).to_be_bytes());
                out.extend_from_slice(message.as_bytes());
                out.extend_from_slice(traceback.as_bytes());
            }
            Frame::BadRequest { id, message } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(message.as_bytes());
            }
            Frame::Refused {
                id,
                status,
                message,
            } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
                out.extend_from_slice(message.as_bytes());
            }
            Frame::Batch { method, items } => {
                let refs: Vec<BatchItemRef<'_>> = items
                    .iter()
                    .map(|i| (i.id, i.deadline_ms, i.content_type.as_str(), &i.body[..]))
                    .collect();
                return encode_batch(method, &refs);
            }
            Frame::BatchReply { results } => {
                put_count(&mut out, results.len(), "batch size")?;
                for r in results {
                    out.extend_from_slice(&r.id.to_be_bytes());
                    match &r.outcome {
                        ItemOutcome::Ok { content_type, body } => {
                            out.push(0);
                            put_str16(&mut out, content_type, "content type")?;
                            put_bytes32(&mut out, body)?;
                        }
                        ItemOutcome::Refused { status, message } => {
                            out.push(1);
                            out.extend_from_slice(&status.to_be_bytes());
                            put_bytes32(&mut out, message.as_bytes())?;
                        }
                        ItemOutcome::Failed { message, traceback } => {
                            out.push(2);
                            put_bytes32(&mut out, message.as_bytes())?;
                            put_bytes32(&mut out, traceback.as_bytes())?;
                        }
                    }
                }
            }
            Frame::StreamStart { id, content_type } => {
                out.extend_from_slice(&id.to_be_bytes());
                put_str16(&mut out, content_type, "content type")?;
            }
            Frame::Chunk { id, data } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(data);
            }
            Frame::StreamEnd { id } => out.extend_from_slice(&id.to_be_bytes()),
            Frame::Shutdown => {}
            Frame::Cancel { id } => out.extend_from_slice(&id.to_be_bytes()),
        }
        let len = out.len() - 4;
        let len32 = u32::try_from(len).map_err(|_| Error::TooLarge {
            len,
            max: u32::MAX as usize,
        })?;
        out[..4].copy_from_slice(&len32.to_be_bytes());
        Ok(out)
    }
}

/// Encodes a REQUEST frame from borrowed parts, in one allocation of the exact
/// size: the daemon's hot path, which does not own the request's body.
pub fn encode_request(
    id: u64,
    deadline_ms: u32,
    method: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Vec<u8>, Error> {
    let len = 1 + 8 + 4 + 2 + method.len() + 2 + content_type.len() + body.len();
    let mut out = start_frame(kind::REQUEST, len)?;
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&deadline_ms.to_be_bytes());
    put_str16(&mut out, method, "method")?;
    put_str16(&mut out, content_type, "content type")?;
    out.extend_from_slice(body);
    Ok(out)
}

/// A frame of `len` bytes (type byte included) so far: its length prefix and type,
/// with room for the rest.
fn start_frame(kind: u8, len: usize) -> Result<Vec<u8>, Error> {
    let len32 = u32::try_from(len).map_err(|_| Error::TooLarge {
        len,
        max: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&len32.to_be_bytes());
    out.push(kind);
    Ok(out)
}

/// One item of a BATCH, borrowed: id, deadline_ms, content type, body.
pub type BatchItemRef<'a> = (u64, u32, &'a str, &'a [u8]);

/// Encodes a BATCH frame from borrowed parts, in one allocation of the exact size
/// (the daemon does not own its requests' bodies).
pub fn encode_batch(method: &str, items: &[BatchItemRef<'_>]) -> Result<Vec<u8>, Error> {
    if items.is_empty() {
        return Err(Error::Invalid("BATCH", "a batch of no request"));
    }
    let len = 1
        + 2
        + method.len()
        + 2
        + items
            .iter()
            .map(|(_, _, ct, body)| 8 + 4 + 2 + ct.len() + 4 + body.len())
            .sum::<usize>();
    let mut out = start_frame(kind::BATCH, len)?;
    put_str16(&mut out, method, "method")?;
    put_count(&mut out, items.len(), "batch size")?;
    for (id, deadline_ms, ct, body) in items {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&deadline_ms.to_be_bytes());
        put_str16(&mut out, ct, "content type")?;
        put_bytes32(&mut out, body)?;
    }
    Ok(out)
}

/// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are
/// needed, `Ok(Some((frame, used)))` when a frame is complete. The length prefix is
/// checked against `max` before the frame's bytes are even looked at.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Frame, usize)>, Error> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    check_len(len, max)?;
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let f = Frame::decode_body(&buf[4..4 + len])?;
    Ok(Some((f, 4 + len)))
}

/// The length check applied to every prefix.
pub fn check_len(len: usize, max: usize) -> Result<(), Error> {
    if len == 0 {
        return Err(Error::Empty);
    }
    if len > max {
        return Err(Error::TooLarge { len, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let s16 = "[a-zA-Z0-9/;=. -]{0,40}";
        prop_oneof![
            (any::<u16>(), any::<u32>(), ".{0,40}").prop_map(|(version, pid, meta)| Frame::Hello {
                version,
                pid,
                meta
            }),
            ".{0,80}".prop_map(|json| Frame::Ready { json }),
            ".{0,80}".prop_map(|text| Frame::SetupFailed { text }),
            ".{0,80}".prop_map(|json| Frame::ForkWarning { json }),
            (
                any::<u64>(),
                any::<u32>(),
                s16,
                s16,
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(id, deadline_ms, method, content_type, body)| {
                    Frame::Request(Request {
                        id,
                        deadline_ms,
                        method,
                        content_type,
                        body,
                    })
                }),
            (
                any::<u64>(),
                s16,
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(id, content_type, body)| Frame::Reply {
                    id,
                    content_type,
                    body
                }),
            (any::<u64>(), ".{0,60}", ".{0,200}").prop_map(|(id, message, traceback)| {
                Frame::Error {
                    id,
                    message,
                    traceback,
                }
            }),
            (any::<u64>(), ".{0,60}").prop_map(|(id, message)| Frame::BadRequest { id, message }),
            (any::<u64>(), 400u16..=599, ".{0,60}").prop_map(|(id, status, message)| {
                Frame::Refused {
                    id,
                    status,
                    message,
                }
            }),
            (
                s16,
                proptest::collection::vec(
                    (
                        any::<u64>(),
                        any::<u32>(),
                        s16,
                        proptest::collection::vec(any::<u8>(), 0..60)
                    ),
                    1..8
                )
            )
                .prop_map(|(method, items)| Frame::Batch {
                    method,
                    items: items
                        .into_iter()
                        .map(|(id, deadline_ms, content_type, body)| BatchItem {
                            id,
                            deadline_ms,
                            content_type,
                            body
                        })
                        .collect()
                }),
            proptest::collection::vec((any::<u64>(), arb_outcome()), 0..8).prop_map(|rs| {
                Frame::BatchReply {
                    results: rs
                        .into_iter()
                        .map(|(id, outcome)| BatchResult { id, outcome })
                        .collect(),
                }
            }),
            (any::<u64>(), s16)
                .prop_map(|(id, content_type)| Frame::StreamStart { id, content_type }),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..100))
                .prop_map(|(id, data)| Frame::Chunk { id, data }),
            any::<u64>().prop_map(|id| Frame::StreamEnd { id }),
            Just(Frame::Shutdown),
            any::<u64>().prop_map(|id| Frame::Cancel { id }),
        ]
    }

    fn arb_outcome() -> impl Strategy<Value = ItemOutcome> {
        prop_oneof![
            (
                "[a-z/;=]{0,20}",
                proptest::collection::vec(any::<u8>(), 0..60)
            )
                .prop_map(|(content_type, body)| ItemOutcome::Ok { content_type, body }),
            (400u16..=599, ".{0,40}")
                .prop_map(|(status, message)| ItemOutcome::Refused { status, message }),
            (".{0,40}", ".{0,80}")
                .prop_map(|(message, traceback)| ItemOutcome::Failed { message, traceback }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(f in arb_frame()) {
            let bytes = f.encode().unwrap();
            let (g, used) = decode(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(g, f);
        }

        #[test]
        fn every_prefix_is_incomplete_never_an_error(f in arb_frame()) {
            let bytes = f.encode().unwrap();
            for cut in 0..bytes.len() {
                prop_assert_eq!(decode(&bytes[..cut], DEFAULT_MAX_FRAME), Ok(None));
            }
        }

        #[test]
        fn frames_concatenate(a in arb_frame(), b in arb_frame()) {
            let mut bytes = a.encode().unwrap();
            bytes.extend(b.encode().unwrap());
            let (x, n) = decode(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
            let (y, m) = decode(&bytes[n..], DEFAULT_MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!((x, y, n + m), (a, b, bytes.len()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, 1024);
        }
    }

    #[test]
    fn oversized_prefix_is_rejected_before_the_bytes_arrive() {
        let bytes = [0x7f, 0xff, 0xff, 0xff, kind::REPLY];
        assert_eq!(
            decode(&bytes, DEFAULT_MAX_FRAME),
            Err(Error::TooLarge {
                len: 0x7fff_ffff,
                max: DEFAULT_MAX_FRAME
            })
        );
    }

    /// One source for the version: the crate's constant. The specification's title
    /// and closing note, the Python SDK's constant and docstring, and its package
    /// description must say the same number.
    #[test]
    fn every_document_says_the_crates_version() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap();
        let v = VERSION;
        let spec = read("docs/protocol.md");
        for says in [
            format!("# The paddock worker protocol, version {v}\n"),
            format!(
                "A version-{v} daemon accepts workers that say {MIN_VERSION} to {v} in HELLO. The Python SDK says {v}."
            ),
            format!("`version: u16` ({MIN_VERSION} to {v})"),
        ] {
            assert!(spec.contains(&says), "docs/protocol.md should say: {says}");
        }
        let sdk = read("sdk/python/paddock/__init__.py");
        for says in [
            format!("\nPROTOCOL_VERSION = {v}  #"),
            format!("implements docs/protocol.md (version {v}:"),
        ] {
            assert!(sdk.contains(&says), "the SDK should say: {says}");
        }
        let pyproject = read("sdk/python/pyproject.toml");
        assert!(
            pyproject.contains(&format!("(worker protocol version {v})")),
            "sdk/python/pyproject.toml's description should name version {v}"
        );
        assert!(
            include_str!("lib.rs")
                .starts_with(&format!("//! The paddock worker protocol (version {v})")),
            "this crate's header should name version {v}"
        );
    }

    #[test]
    fn a_refusal_carries_an_error_status_only() {
        let ok = Frame::Refused {
            id: 7,
            status: 422,
            message: "no".into(),
        };
        let bytes = ok.encode().unwrap();
        assert_eq!(decode(&bytes, 100).unwrap().unwrap().0, ok);
        for status in [200u16, 399, 600] {
            let bad = Frame::Refused {
                id: 7,
                status,
                message: "no".into(),
            };
            assert_eq!(
                decode(&bad.encode().unwrap(), 100),
                Err(Error::Invalid(
                    "REFUSED",
                    "a refusal's status is not in 400..=599"
                ))
            );
        }
    }

    #[test]
    fn malformed_frames() {
        assert_eq!(decode(&[0, 0, 0, 0], 100), Err(Error::Empty));
        assert_eq!(
            decode(&[0, 0, 0, 1, 0x7f], 100),
            Err(Error::UnknownType(0x7f))
        );
        assert_eq!(
            decode(&[0, 0, 0, 3, kind::REPLY, 0, 0], 100),
            Err(Error::Truncated("REPLY"))
        );
        assert_eq!(
            decode(&[0, 0, 0, 2, kind::SHUTDOWN, 9], 100),
            Err(Error::Trailing("SHUTDOWN"))
        );
    }

    #[test]
    fn bad_request_layout_is_the_documented_one() {
        // docs/protocol.md: type 0x16, `id: u64`, then the message to the end.
        let bytes = Frame::BadRequest {
            id: 0x0102_0304_0506_0708,
            message: "no text".into(),
        }
        .encode()
        .unwrap();
        let mut want = vec![0, 0, 0, 16, 0x16, 1, 2, 3, 4, 5, 6, 7, 8];
        want.extend_from_slice(b"no text");
        assert_eq!(bytes, want);
        assert!(matches!(
            Frame::decode_body(&[0x16, 0, 0, 0]),
            Err(Error::Truncated("BAD_REQUEST"))
        ));
    }

    #[test]
    fn batch_layouts_are_the_documented_ones() {
        // docs/protocol.md: BATCH is method: str16, count: u16, then per item id: u64,
        // deadline_ms: u32, content_type: str16, body_len: u32, body.
        let bytes = Frame::Batch {
            method: "m".into(),
            items: vec![BatchItem {
                id: 1,
                deadline_ms: 2,
                content_type: "t".into(),
                body: b"xy".to_vec(),
            }],
        }
        .encode()
        .unwrap();
        let want = [
            0, 0, 0, 27, 0x17, 0, 1, b'm', 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 1, b't', 0,
            0, 0, 2, b'x', b'y',
        ];
        assert_eq!(bytes, want);
        // BATCH_REPLY: count: u16, then id: u64, outcome: u8 and its fields.
        let bytes = Frame::BatchReply {
            results: vec![BatchResult {
                id: 9,
                outcome: ItemOutcome::Refused {
                    status: 400,
                    message: "no".into(),
                },
            }],
        }
        .encode()
        .unwrap();
        let want = [
            0, 0, 0, 20, 0x18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 1, 1, 144, 0, 0, 0, 2, b'n', b'o',
        ];
        assert_eq!(bytes, want);
    }

    #[test]
    fn malformed_batches() {
        // A batch of nothing.
        assert!(matches!(
            Frame::decode_body(&[0x17, 0, 1, b'm', 0, 0]),
            Err(Error::Invalid("BATCH", _))
        ));
        // A count larger than what follows is truncated, not a huge allocation.
        assert_eq!(
            Frame::decode_body(&[0x17, 0, 1, b'm', 0xff, 0xff]),
            Err(Error::Truncated("BATCH"))
        );
        // An unknown outcome, and a refusal with a status that is no error.
        let mut b = vec![0x18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 7];
        assert!(matches!(
            Frame::decode_body(&b),
            Err(Error::Invalid("BATCH_REPLY", _))
        ));
        b.truncate(11);
        b.extend_from_slice(&[1, 0, 200, 0, 0, 0, 0]);
        assert!(matches!(
            Frame::decode_body(&b),
            Err(Error::Invalid("BATCH_REPLY", _))
        ));
    }

    #[test]
    fn ids_carry_the_generation() {
        let id = request_id(7, 42);
        assert_eq!(generation_of(id), 7);
        assert_eq!(id & 0xffff_ffff, 42);
    }
}
