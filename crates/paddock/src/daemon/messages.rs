//! The messages the daemon's parts exchange about requests: a [`Job`] on its way to
//! a worker, the [`Command`]s a worker's actor takes, and the [`Outcome`] that goes
//! back to the gateway or the job pump.
//!
//! Why a module of its own: the dispatcher, the worker actor, the gateway and the job
//! pump all speak these types; here they depend on none of those parts, so no two
//! of them import each other.

use std::time::{Duration, Instant};

use std::sync::Arc;

use axum::body::Bytes;
use tokio::sync::oneshot;

/// How a request ended, for the gateway to turn into an HTTP response.
#[derive(Debug)]
pub enum Outcome {
    Ok {
        content_type: String,
        body: Vec<u8>,
    },
    /// The handler raised: `message` and `traceback` are in the service's log
    /// under `error_id`; clients see them only with `expose_errors`.
    HandlerError {
        message: String,
        traceback: String,
        worker: u32,
        error_id: String,
    },
    /// The worker died (or broke the protocol) while serving the request.
    Crashed {
        cause: CrashCause,
    },
    /// The request killed `poison_limit` workers: it is not retried.
    Poison {
        cause: CrashCause,
    },
    /// The request passed its deadline; the worker was killed.
    DeadlineKilled {
        cause: DeadlineCause,
    },
    NotFound {
        message: String,
    },
    /// The worker streams its answer: the chunks arrive on `items` as it sends them.
    Stream {
        content_type: String,
        items: tokio::sync::mpsc::Receiver<StreamItem>,
    },
    /// A batched handler refused this item with an HTTP error status and a message
    /// meant for the client (`paddock.Error`).
    Refused {
        status: u16,
        message: String,
    },
    /// The request cannot be sent to a worker (too large, a header too long).
    BadRequest {
        message: String,
        code: u16,
    },
    QueueFull,
    QueueTimeout,
    ShuttingDown,
    /// The job was cancelled while a worker ran it: the stream was stopped, or the
    /// worker killed (and replaced, not counted as a failure).
    Cancelled,
    /// Every worker is crash-looping: `reason` is one's last failure, and the next
    /// try is in `retry_after`.
    Unavailable {
        reason: String,
        retry_after: Duration,
        /// Crash-looping (or failed), or unloaded (a start on demand failed, or
        /// the memory budget held it back).
        state: crate::status::ServiceState,
    },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::HandlerError { .. } => "handler_error",
            Outcome::Crashed { .. } => "crashed",
            Outcome::Poison { .. } => "poison",
            Outcome::DeadlineKilled { .. } => "deadline",
            Outcome::NotFound { .. } => "not_found",
            Outcome::Refused { .. } => "refused",
            Outcome::Stream { .. } => "stream",
            Outcome::BadRequest { .. } => "bad_request",
            Outcome::QueueFull => "queue_full",
            Outcome::QueueTimeout => "queue_timeout",
            Outcome::ShuttingDown => "shutting_down",
            Outcome::Cancelled => "cancelled",
            Outcome::Unavailable { .. } => "unavailable",
        }
    }
}

/// One piece of a streamed answer, as the HTTP side gets it. A stream that ends
/// (its channel closes) without `Done` or `Failed` was cut off.
#[derive(Debug)]
pub enum StreamItem {
    Chunk(Bytes),
    /// The stream is complete.
    Done,
    /// The stream failed after what was sent: what to tell the client.
    Failed {
        message: String,
        cause: serde_json::Value,
    },
}

/// Why a request's worker died, as the client's 502 body (`cause`) says it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum CrashCause {
    /// The process ended: its exit status or signal, and its last lines.
    Exit(ExitDetail),
    /// The worker broke the protocol and was killed for it.
    Violation(ViolationDetail),
}

impl CrashCause {
    pub fn worker(&self) -> u32 {
        match self {
            CrashCause::Exit(d) => d.worker,
            CrashCause::Violation(d) => d.worker,
        }
    }

    pub fn description(&self) -> &str {
        match self {
            CrashCause::Exit(d) => &d.description,
            CrashCause::Violation(d) => &d.description,
        }
    }

    /// How many workers this request has killed (a violation counts none).
    pub fn workers_killed(&self) -> u32 {
        match self {
            CrashCause::Exit(d) => d.workers_killed_by_this_request,
            CrashCause::Violation(_) => 0,
        }
    }

    /// The cause as a client (an HTTP answer, a job's history) is shown it. The
    /// worker's last log lines hold other requests' output (their tracebacks, their
    /// data): only with `expose_errors` do they leave the daemon. Otherwise the
    /// client gets the error id that tags them in the service's log, and where that
    /// log is.
    pub fn for_client(&self, expose: bool, service: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if !expose && let Some(o) = v.as_object_mut() {
            o.remove("log_tail");
            o.insert(
                "log".into(),
                format!("the worker's last lines are in service {service}'s log (paddock logs {service}), after its error id").into(),
            );
        }
        v
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExitDetail {
    pub worker: u32,
    pub pid: i32,
    pub generation: u64,
    pub signal: Option<String>,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub description: String,
    pub workers_killed_by_this_request: u32,
    /// Tags the crash in the service's log (the operator's way from a client's
    /// report to the worker's last lines).
    pub error_id: String,
    /// The worker's last log lines: the operator's (status, logs); a client sees
    /// them only with `expose_errors` ([`CrashCause::for_client`]).
    pub log_tail: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ViolationDetail {
    pub worker: u32,
    pub pid: Option<i32>,
    pub generation: u64,
    pub protocol_violation: String,
    pub description: String,
    pub queued_ms: u64,
}

/// The request that passed its deadline, as the client's 504 body says it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadlineCause {
    pub worker: u32,
    pub pid: i32,
    pub generation: u64,
    pub request_timeout_ms: u64,
    pub queued_ms: u64,
    pub ran_ms: u64,
}

/// One request on its way to a worker.
#[derive(Debug)]
pub struct Job {
    pub method: String,
    pub content_type: String,
    /// Shared with the HTTP request it came in (no copy on the way to the worker).
    pub body: Bytes,
    pub reply: oneshot::Sender<Outcome>,
    /// Workers this request was running on when they died.
    pub crashes: u32,
    /// When it gives up waiting for a worker.
    pub queue_deadline: Instant,
    /// When the gateway received it.
    pub received: Instant,
    /// A part of a batch that was split after its worker died: it runs only with
    /// the other requests of the same part (see docs/protocol.md, "Batches").
    pub part: Option<Arc<BatchPart>>,
    /// How a job's cancel reaches the worker running it (jobs only: an online
    /// request's client leaving cancels nothing but a stream).
    pub abort: Option<Arc<Abort>>,
}

/// A cancel of the job a worker is running: requested once by the pump, awaited by
/// the worker's actor (which stops the stream, or kills the worker).
#[derive(Debug, Default)]
pub struct Abort {
    requested: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl Abort {
    pub fn request(&self) {
        self.requested
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_waiters();
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once the cancel is requested (at once if it already was).
    pub async fn requested(&self) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Registered before the check: a request in between still wakes it.
            notified.as_mut().enable();
            if self.is_requested() {
                return;
            }
            notified.await;
        }
    }
}

/// One part of a bisected batch. Parts of the same original batch share `deaths`.
#[derive(Debug)]
pub struct BatchPart {
    /// Worker deaths the original batch has caused so far.
    pub deaths: Arc<std::sync::atomic::AtomicU32>,
}

impl Job {
    /// The job, unless it was cancelled while it waited for a worker: then it is
    /// answered `Cancelled` here and never sent.
    pub fn unless_cancelled(self) -> Option<Job> {
        if self.abort.as_ref().is_some_and(|a| a.is_requested()) {
            let _ = self.reply.send(Outcome::Cancelled);
            return None;
        }
        Some(self)
    }

    /// Whether `other` may go in the same batch as this job: the same method, and
    /// the same part of a bisected batch (or neither in one).
    pub fn batches_with(&self, other: &Job) -> bool {
        self.method == other.method
            && match (&self.part, &other.part) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

/// Orders for a worker's actor.
#[derive(Debug)]
pub enum Command {
    /// Stop now (SIGTERM, then SIGKILL after stop_timeout).
    Stop,
    /// Serve this request.
    Serve(Job),
    /// Take no more requests; stop once the current one is answered.
    Retire,
}

/// Checks what goes into a protocol frame: a method name that can be a handler, and
/// A request that cannot be framed for a worker, or carries a header paddock will
/// not honour: the message for its 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

/// a content type of sane length. Err is the message for a 400.
pub fn check_request(method: &str, content_type: &str) -> Result<(), InvalidRequest> {
    if method.is_empty()
        || method.len() > 128
        || !method
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(InvalidRequest(format!(
            "{method:?} is not a handler name (1 to 128 letters, digits or '_')"
        )));
    }
    if content_type.len() > 1024 {
        return Err(InvalidRequest(format!(
            "the Content-Type header is {} bytes; at most 1024",
            content_type.len()
        )));
    }
    Ok(())
}
