//! The dispatcher: one task per worker service that owns the service's request
//! queue and hands each request to an idle worker.
//!
//! Invariants:
//! - a worker holds at most one request: requests go only to workers that announced
//!   themselves idle, and a worker announces itself once per request it finished;
//! - the queue is bounded (`max_queue`); a full queue answers 503 at once;
//! - a request handed to a worker that died in between comes back (`requeue`) to the
//!   front of the queue: a crash never loses a queued request;
//! - a request that waited `queue_timeout` is answered 503; one whose client went
//!   away is dropped without using a worker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;
use super::worker::Command;

/// How a request ended, for the gateway to turn into an HTTP response.
#[derive(Debug)]
pub enum Outcome {
    Ok {
        content_type: String,
        body: Vec<u8>,
    },
    HandlerError {
        message: String,
        traceback: String,
        worker: u32,
    },
    Crashed {
        cause: serde_json::Value,
    },
    Poison {
        cause: serde_json::Value,
    },
    DeadlineKilled {
        cause: serde_json::Value,
    },
    NotFound {
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
            Outcome::BadRequest { .. } => "bad_request",
            Outcome::QueueFull => "queue_full",
            Outcome::QueueTimeout => "queue_timeout",
            Outcome::ShuttingDown => "shutting_down",
        }
    }
}

/// One request on its way to a worker.
#[derive(Debug)]
pub struct Job {
    pub method: String,
    pub content_type: String,
    pub body: Vec<u8>,
    pub reply: oneshot::Sender<Outcome>,
    /// Workers this request was running on when they died.
    pub crashes: u32,
    /// When it gives up waiting for a worker.
    pub queue_deadline: Instant,
    /// When the gateway received it.
    pub received: Instant,
}

enum Msg {
    Submit(Job),
    Requeue(Job),
    Idle {
        wid: u64,
        tx: mpsc::UnboundedSender<Command>,
    },
    Close,
}

/// A handle to a service's dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::UnboundedSender<Msg>,
    queue_timeout: Duration,
}

impl Dispatcher {
    pub fn start(
        service: &str,
        max_queue: usize,
        queue_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Dispatcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let depth = metrics
            .queue_depth
            .get_or_create(&Metrics::service(service))
            .clone();
        tokio::spawn(run(rx, max_queue, depth));
        Dispatcher { tx, queue_timeout }
    }

    /// Queues a request; its outcome arrives on the returned receiver.
    pub fn submit(
        &self,
        method: String,
        content_type: String,
        body: Vec<u8>,
    ) -> oneshot::Receiver<Outcome> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            method,
            content_type,
            body,
            reply,
            crashes: 0,
            queue_deadline: Instant::now() + self.queue_timeout,
            received: Instant::now(),
        };
        if let Err(mpsc::error::SendError(Msg::Submit(job))) = self.tx.send(Msg::Submit(job)) {
            let _ = job.reply.send(Outcome::ShuttingDown);
        }
        rx
    }

    /// Puts a request back at the front of the queue (its worker could not run it).
    pub fn requeue(&self, mut job: Job) {
        job.queue_deadline = Instant::now() + self.queue_timeout;
        if let Err(mpsc::error::SendError(Msg::Requeue(job))) = self.tx.send(Msg::Requeue(job)) {
            let _ = job.reply.send(Outcome::ShuttingDown);
        }
    }

    /// A worker is idle and takes the next request on `tx`.
    pub fn idle(&self, wid: u64, tx: mpsc::UnboundedSender<Command>) {
        let _ = self.tx.send(Msg::Idle { wid, tx });
    }

    /// Answers everything queued with 503 and stops taking requests.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Close);
    }
}

/// The next request whose client still waits for it.
fn pop_live(queue: &mut VecDeque<Job>) -> Option<Job> {
    while let Some(job) = queue.pop_front() {
        if !job.reply.is_closed() {
            return Some(job);
        }
    }
    None
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    max_queue: usize,
    depth: prometheus_client::metrics::gauge::Gauge,
) {
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut idle: VecDeque<(u64, mpsc::UnboundedSender<Command>)> = VecDeque::new();
    let mut closed = false;
    loop {
        let next_expiry = queue.iter().map(|j| j.queue_deadline).min();
        let msg = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => Some(m),
                None => return,
            },
            _ = tokio::time::sleep_until(next_expiry.unwrap_or_else(Instant::now).into()), if next_expiry.is_some() => None,
        };
        match msg {
            Some(Msg::Submit(job)) => {
                if closed {
                    let _ = job.reply.send(Outcome::ShuttingDown);
                } else if queue.len() >= max_queue {
                    let _ = job.reply.send(Outcome::QueueFull);
                } else {
                    queue.push_back(job);
                }
            }
            Some(Msg::Requeue(job)) => {
                if closed {
                    let _ = job.reply.send(Outcome::ShuttingDown);
                } else {
                    queue.push_front(job);
                }
            }
            Some(Msg::Idle { wid, tx }) => {
                idle.retain(|(w, _)| *w != wid);
                idle.push_back((wid, tx));
            }
            Some(Msg::Close) => {
                closed = true;
                for job in queue.drain(..) {
                    let _ = job.reply.send(Outcome::ShuttingDown);
                }
            }
            None => {}
        }
        // Expire what waited too long — only when something is due, so the common
        // case costs nothing per message. Clients that went away are skipped when
        // their turn comes.
        let now = Instant::now();
        if next_expiry.is_some_and(|t| t <= now) {
            let mut kept = VecDeque::with_capacity(queue.len());
            for job in queue.drain(..) {
                if job.queue_deadline <= now {
                    let _ = job.reply.send(Outcome::QueueTimeout);
                } else {
                    kept.push_back(job);
                }
            }
            queue = kept;
        }
        // Hand out work: one request per idle worker.
        while !queue.is_empty() {
            let Some((wid, tx)) = idle.pop_front() else {
                break;
            };
            let Some(job) = pop_live(&mut queue) else {
                idle.push_front((wid, tx));
                break;
            };
            match tx.send(Command::Serve(job)) {
                Ok(()) => {}
                // That worker is gone; the request goes back and waits for another.
                Err(mpsc::error::SendError(Command::Serve(job))) => queue.push_front(job),
                Err(_) => {}
            }
        }
        depth.set(queue.len() as i64);
    }
}
