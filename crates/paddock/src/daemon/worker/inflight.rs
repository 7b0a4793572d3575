//! What the actor holds of the request it is serving: the request, its deadline,
//! and, once the worker streams its answer, the stream's state. Data only, shared
//! by `request` (sending and answering) and `stream` (streamed answers).

use std::time::Instant;

use tokio::sync::mpsc;

use crate::daemon::messages::{Job, StreamItem};

/// The request being served.
pub(super) struct InFlight {
    pub(super) id: u64,
    pub(super) job: Job,
    pub(super) deadline: Instant,
    pub(super) started: Instant,
    pub(super) idempotent: bool,
    /// Its streamed answer, once the worker began one.
    pub(super) stream: Option<OpenStream>,
}

/// Chunks a stream's client has not taken yet, at most.
pub(super) const STREAM_BUFFER: usize = 16;

pub(super) struct OpenStream {
    /// To the HTTP side; `None` once the client is gone or the stream failed.
    pub(super) tx: Option<mpsc::Sender<StreamItem>>,
    /// An item that found the buffer full, and since when: no frame is read from
    /// the worker until the client takes it.
    pub(super) stalled: Option<(StreamItem, Instant)>,
    /// The worker's last frame of this stream (or the end of the last stall).
    pub(super) last_frame: Instant,
    /// When CANCEL was sent.
    pub(super) cancelled_at: Option<Instant>,
    /// The worker ended the stream (its end may still be stalled).
    pub(super) ended: bool,
}
