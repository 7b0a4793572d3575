//! The frames: their type bytes (`kind`), what each carries (`Frame` and the
//! structs of its variants), the errors of a malformed one, and request ids.

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

impl Frame {
    pub(crate) fn name(t: u8) -> &'static str {
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
}
