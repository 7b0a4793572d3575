//! What a request's `Outcome` means when it is not an answer: one table, read by
//! the gateway (an HTTP error) and by the job pump (a job's history, and whether the
//! job is tried again).
//!
//! Why one place: a crash, a deadline, a refusal or a full queue must mean the same
//! to an HTTP client and to a job, and a rule (the worker's last log lines only with
//! `expose_errors`; a 4xx is not worth a retry) is written once.
//!
//! Invariants: every outcome but an answer (`Ok`, `Stream`) has a `Failure`; a
//! client's `cause` and a job's `job_cause` carry a worker's log lines or a
//! handler's traceback only with `expose`.

use std::time::Duration;

use serde_json::{Value, json};

use super::messages::Outcome;

/// What the failure is about: the service, the handler, and the settings its
/// message names.
pub struct Context<'a> {
    pub service: &'a str,
    pub method: &'a str,
    /// The instance's `expose_errors`.
    pub expose: bool,
    pub request_timeout: Duration,
    pub max_queue: usize,
    pub queue_timeout: Duration,
}

/// What a job does after this failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// A failed attempt: tried again after a backoff while attempts are left.
    Retry,
    /// A retry cannot change it (the request was refused, there is no such
    /// handler): the job is dead now.
    GiveUp,
    /// It never reached a worker: back to the queue, no attempt counted.
    Requeue(String),
    /// The daemon stopped with it: back to the queue, recorded as interrupted.
    Interrupted(String),
}

/// A request that got no answer, as its reporters say it.
pub struct Failure {
    /// The HTTP status a client gets.
    pub status: u16,
    /// The client's message.
    pub message: String,
    /// The client's `cause`.
    pub cause: Value,
    /// What a job's history records of the attempt.
    pub job_cause: Value,
    pub then: Then,
    /// When to try again, for a `Retry-After` beyond the default second.
    pub retry_after: Option<Duration>,
}

impl Failure {
    fn new(status: u16, message: String, cause: Value, job_cause: Value, then: Then) -> Failure {
        Failure {
            status,
            message,
            cause,
            job_cause,
            then,
            retry_after: None,
        }
    }
}

/// An outcome read: an answer, whole or streamed, or a failure.
pub enum Verdict {
    Answer {
        content_type: String,
        body: Vec<u8>,
    },
    Stream {
        content_type: String,
        items: tokio::sync::mpsc::Receiver<super::messages::StreamItem>,
    },
    Failed(Box<Failure>),
}

/// What an outcome is.
pub fn of(outcome: Outcome, ctx: &Context) -> Verdict {
    let service = ctx.service;
    Verdict::Failed(Box::new(match outcome {
        Outcome::Ok { content_type, body } => return Verdict::Answer { content_type, body },
        Outcome::Stream {
            content_type,
            items,
        } => {
            return Verdict::Stream {
                content_type,
                items,
            };
        }
        Outcome::HandlerError {
            message,
            traceback,
            worker,
            error_id,
        } => {
            let (cause, job_cause) = if ctx.expose {
                (
                    json!({"error_id": error_id, "worker": worker, "message": message, "traceback": traceback}),
                    json!({"kind": "handler_error", "error_id": error_id, "message": message, "traceback": traceback, "worker": worker}),
                )
            } else {
                (
                    json!({"error_id": error_id, "worker": worker}),
                    json!({"kind": "handler_error", "error_id": error_id, "worker": worker}),
                )
            };
            Failure::new(
                500,
                format!(
                    "handler {:?} failed (error id {error_id}; the service's log has the details)",
                    ctx.method
                ),
                cause,
                job_cause,
                Then::Retry,
            )
        }
        Outcome::Crashed { cause } => {
            let detail = cause.for_client(ctx.expose, service);
            Failure::new(
                502,
                format!(
                    "worker {} crashed while serving the request: it {}",
                    cause.worker(),
                    cause.description()
                ),
                detail.clone(),
                json!({"kind": "crash", "detail": detail}),
                Then::Retry,
            )
        }
        Outcome::Poison { cause } => {
            let detail = cause.for_client(ctx.expose, service);
            Failure::new(
                502,
                format!(
                    "poison request: it killed {} workers and will not be retried",
                    cause.workers_killed()
                ),
                detail.clone(),
                json!({"kind": "crash", "detail": detail}),
                Then::Retry,
            )
        }
        Outcome::DeadlineKilled { cause } => Failure::new(
            504,
            format!(
                "deadline of {}ms passed; the worker was killed and is being replaced",
                ctx.request_timeout.as_millis()
            ),
            json!(cause),
            json!({"kind": "deadline", "detail": cause}),
            Then::Retry,
        ),
        Outcome::BadRequest { message, code } => Failure::new(
            code,
            message.clone(),
            json!({"kind": "bad_request"}),
            json!({"kind": "bad_request", "message": message}),
            Then::GiveUp,
        ),
        Outcome::NotFound { message } => Failure::new(
            404,
            message.clone(),
            Value::Null,
            json!({"kind": "no_handler", "message": message}),
            Then::GiveUp,
        ),
        // A refusal with a 4xx status is the request's fault: retrying cannot help.
        Outcome::Refused { status, message } => Failure::new(
            status,
            message.clone(),
            json!({"kind": if status == 400 { "bad_request" } else { "refused" }}),
            json!({"kind": "refused", "status": status, "message": message}),
            if status < 500 {
                Then::GiveUp
            } else {
                Then::Retry
            },
        ),
        Outcome::QueueFull => Failure::new(
            503,
            format!("queue full ({} requests waiting)", ctx.max_queue),
            json!({"max_queue": ctx.max_queue}),
            Value::Null,
            Then::Requeue("queue full".into()),
        ),
        Outcome::QueueTimeout => Failure::new(
            503,
            format!(
                "no worker became free within queue_timeout ({}ms)",
                ctx.queue_timeout.as_millis()
            ),
            Value::Null,
            Value::Null,
            Then::Requeue("no worker became free".into()),
        ),
        Outcome::Unavailable {
            reason,
            retry_after,
            state,
        } => Failure {
            retry_after: Some(retry_after),
            ..Failure::new(
                503,
                format!("service {service:?} has no worker that can serve now: {reason}"),
                json!({"state": state, "reason": reason, "retry_after_s": retry_after.as_secs_f64()}),
                Value::Null,
                Then::Requeue(format!("no worker can serve: {reason}")),
            )
        },
        Outcome::ShuttingDown => Failure::new(
            503,
            "paddock is stopping".into(),
            Value::Null,
            Value::Null,
            Then::Interrupted("the daemon stopped".into()),
        ),
        // Only a job is cancelled while it runs; the store already holds it
        // `cancelled`, so what the pump records of this attempt is dropped.
        Outcome::Cancelled => Failure::new(
            409,
            "the job was cancelled while it ran".into(),
            json!({"kind": "cancelled"}),
            json!({"kind": "cancelled"}),
            Then::GiveUp,
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Verdict {
        fn failed(self) -> Failure {
            match self {
                Verdict::Failed(f) => *f,
                _ => panic!("an answer"),
            }
        }
    }

    fn ctx(expose: bool) -> Context<'static> {
        Context {
            service: "s",
            method: "predict",
            expose,
            request_timeout: Duration::from_secs(30),
            max_queue: 8,
            queue_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn an_answer_is_no_failure() {
        let ok = Outcome::Ok {
            content_type: "text/plain".into(),
            body: vec![],
        };
        assert!(matches!(of(ok, &ctx(false)), Verdict::Answer { .. }));
    }

    #[test]
    fn a_refusal_is_given_up_under_500_and_retried_from_500() {
        let f = |status| {
            of(
                Outcome::Refused {
                    status,
                    message: "no".into(),
                },
                &ctx(false),
            )
            .failed()
        };
        assert_eq!(f(422).then, Then::GiveUp);
        assert_eq!(f(422).status, 422);
        assert_eq!(f(503).then, Then::Retry);
        assert_eq!(f(400).cause["kind"], "bad_request");
    }

    #[test]
    fn a_traceback_leaves_only_with_expose() {
        let e = |expose| {
            of(
                Outcome::HandlerError {
                    message: "m".into(),
                    traceback: "Traceback".into(),
                    worker: 0,
                    error_id: "E-1".into(),
                },
                &ctx(expose),
            )
            .failed()
        };
        assert!(!e(false).cause.to_string().contains("Traceback"));
        assert!(!e(false).job_cause.to_string().contains("Traceback"));
        assert!(e(true).cause.to_string().contains("Traceback"));
        assert!(e(true).job_cause.to_string().contains("Traceback"));
    }
}
