//! Batches (docs/protocol.md, "Batches"): a worker that becomes free with a request
//! for a batched method takes every waiting request of that method at once, up to
//! `max_size`, sends them as one BATCH, and answers each from the BATCH_REPLY. A
//! worker that dies in a batch, or passes `batch_timeout`, has its batch split in
//! halves that run again on other workers, until the request that kills workers is
//! alone — where it is a plain request.
//!
//! Invariants:
//! - an idle worker never waits for company unless `max_wait` says so, and then at
//!   most `max_wait` from the oldest request's arrival, and never for more than half
//!   of `request_timeout` (a request is never held to its deadline);
//! - a batch holds requests of one method, and of one part of a bisected batch (so
//!   the halves of a split batch never mix again);
//! - every request of a batch is answered exactly once: from the reply, with 504
//!   when its own deadline passed, or by running again in a half (a violation of the
//!   protocol re-queues them all, uncounted);
//! - one original batch causes at most `death_cap(max_size)` worker deaths; past
//!   that its remaining requests get 502.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use paddock_protocol::{BatchResult, ItemOutcome};
use tokio::time::sleep_until;

use super::Actor;
use super::conn::Violation;
use super::handle::TAIL_LINES;
use super::inflight::InFlight;
use crate::daemon::dispatch::Dispatcher;
use crate::daemon::lifecycle::{Event, State};
use crate::daemon::messages::{BatchPart, CrashCause, DeadlineCause, ExitDetail, Job, Outcome};
use crate::daemon::metrics::Metrics;
use crate::status::ExitCause;

/// A batched method's limits on this worker: what it announced, overridden by the
/// service's `[batch.METHOD]` config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Limits {
    pub(super) max_size: usize,
    pub(super) max_wait: Duration,
    pub(super) timeout: Duration,
}

/// One request of the batch in flight.
pub(super) struct Item {
    pub(super) id: u64,
    pub(super) job: Job,
    /// When its client stops waiting: its arrival plus `request_timeout`.
    pub(super) deadline: Instant,
}

pub(super) struct BatchInFlight {
    pub(super) method: String,
    pub(super) items: Vec<Item>,
    pub(super) started: Instant,
    /// When the worker is killed: `batch_timeout` after the start, or once every
    /// request's deadline passed, whichever is first.
    pub(super) kill_at: Instant,
    /// The most worker deaths the original batch may cause.
    pub(super) cap: u32,
    /// Its `batch_timeout`.
    pub(super) timeout: Duration,
}

/// The most worker deaths one original batch may cause: `2·(⌈log2 max_size⌉ + 1)`.
pub(super) fn death_cap(max_size: usize) -> u32 {
    2 * (max_size.max(1).next_power_of_two().trailing_zeros() + 1)
}

impl Actor {
    /// The limits of `method` if this worker batches it.
    pub(super) fn batch_limits(&self, method: &str) -> Option<Limits> {
        let conn = self.conn.as_ref().filter(|c| c.version >= 3)?;
        let &(size, wait) = conn.batch.get(method)?;
        let o = self.spec.service.batch.get(method);
        Some(Limits {
            max_size: o.and_then(|o| o.max_size).unwrap_or(size).max(1),
            max_wait: o.and_then(|o| o.max_wait).unwrap_or(wait),
            timeout: o
                .and_then(|o| o.batch_timeout)
                .unwrap_or(self.spec.service.request_timeout),
        })
    }

    /// Sends `first` and the queued requests that may join it as one BATCH.
    pub(super) async fn serve_batch(
        &mut self,
        first: Job,
        limits: Limits,
        dispatcher: Dispatcher,
    ) -> Option<Event> {
        let timeout = self.spec.service.request_timeout;
        let mut jobs = vec![first];
        dispatcher.fill_batch(&mut jobs, limits.max_size);
        if !limits.max_wait.is_zero() && jobs.len() < limits.max_size {
            // Held open for more: until max_wait after the oldest arrival, and never
            // for more than half of what the oldest request's deadline allows (the
            // other half is the model's).
            let oldest = jobs.iter().map(|j| j.received).min().expect("not empty");
            let until = oldest + limits.max_wait.min(timeout / 2);
            // The answers of the batch just finished go out first: their clients'
            // next requests are the company this batch waits for.
            self.send_replies();
            while jobs.len() < limits.max_size && Instant::now() < until {
                let arrival = dispatcher.next_arrival();
                dispatcher.fill_batch(&mut jobs, limits.max_size);
                if jobs.len() >= limits.max_size {
                    break;
                }
                tokio::select! {
                    _ = arrival => {}
                    _ = sleep_until(until.into()) => {}
                }
                dispatcher.fill_batch(&mut jobs, limits.max_size);
            }
        }
        jobs.retain(|j| !j.reply.is_closed());
        // Jobs cancelled while they waited are never sent (a cancel inside a
        // running batch costs the worker).
        let jobs: Vec<Job> = jobs.into_iter().filter_map(Job::unless_cancelled).collect();
        if jobs.is_empty() {
            return None;
        }
        let method = jobs[0].method.clone();
        let now = Instant::now();
        let mut items: Vec<Item> = jobs
            .into_iter()
            .map(|job| {
                self.seq = self.seq.wrapping_add(1);
                Item {
                    id: paddock_protocol::request_id(self.generation as u32, self.seq),
                    deadline: job.received + timeout,
                    job,
                }
            })
            .collect();
        // A batch larger than a frame sends what fits; the rest waits for the next.
        let bytes = loop {
            let refs: Vec<paddock_protocol::BatchItemRef<'_>> = items
                .iter()
                .map(|i| {
                    let left = i.deadline.saturating_duration_since(now).as_millis();
                    (
                        i.id,
                        left.min(u128::from(u32::MAX)) as u32,
                        i.job.content_type.as_str(),
                        &i.job.body[..],
                    )
                })
                .collect();
            let size_error = match paddock_protocol::encode_batch(&method, &refs) {
                Ok(b) if b.len() <= self.spec.service.max_frame + 4 => break b,
                Ok(b) => format!(
                    "the request is {} bytes, over this service's max_frame ({})",
                    b.len(),
                    self.spec.service.max_frame
                ),
                Err(e) => e.to_string(),
            };
            if items.len() == 1 {
                let job = items.pop().expect("one item").job;
                let _ = job.reply.send(Outcome::BadRequest {
                    message: size_error,
                    code: 413,
                });
                return None;
            }
            let rest = items.split_off(items.len() / 2);
            for it in rest.into_iter().rev() {
                dispatcher.requeue(it.job);
            }
        };
        let n = items.len();
        dispatcher.record_batch(&method, n);
        let labels = Metrics::method(self.service(), &method);
        let m = &self.deps.metrics;
        m.batch_size.get_or_create(&labels).observe(n as f64);
        m.batch_items.get_or_create(&labels).inc_by(n as u64);
        let oldest = items
            .iter()
            .map(|i| i.job.received)
            .min()
            .expect("not empty");
        m.batch_wait
            .get_or_create(&labels)
            .observe(now.duration_since(oldest).as_secs_f64());
        let latest = items.iter().map(|i| i.deadline).max().expect("not empty");
        self.in_flight.inc_by(n as i64);
        self.late_read_since = None; // a new deadline, a new grace
        self.batch = Some(BatchInFlight {
            method,
            items,
            started: now,
            kill_at: (now + limits.timeout).min(latest),
            cap: death_cap(limits.max_size),
            timeout: limits.timeout,
        });
        self.write_request(bytes, limits.timeout, dispatcher).await
    }

    /// Takes the batch in flight, if any, out of the in-flight count.
    pub(super) fn take_batch(&mut self) -> Option<BatchInFlight> {
        let b = self.batch.take()?;
        self.in_flight.dec_by(b.items.len() as i64);
        Some(b)
    }

    /// Whether `results` answer exactly the batch in flight: one result per item,
    /// no id missing, repeated or foreign.
    pub(super) fn answers_batch(&self, results: &[BatchResult]) -> Result<(), Violation> {
        let Some(b) = &self.batch else {
            return Err(Violation("BATCH_REPLY with no batch outstanding".into()));
        };
        if results.len() != b.items.len() {
            return Err(Violation(format!(
                "BATCH_REPLY with {} results for a batch of {}",
                results.len(),
                b.items.len()
            )));
        }
        let mut sent: Vec<u64> = b.items.iter().map(|i| i.id).collect();
        let mut got: Vec<u64> = results.iter().map(|r| r.id).collect();
        sent.sort_unstable();
        got.sort_unstable();
        if sent != got {
            return Err(Violation(
                "BATCH_REPLY ids are not the batch's ids (one missing, repeated or foreign)".into(),
            ));
        }
        Ok(())
    }

    /// Answers every request of the batch from its result (checked by
    /// `answers_batch`); how many requests that answered.
    pub(super) fn take_batch_answers(&mut self, results: Vec<BatchResult>) -> usize {
        let Some(b) = self.take_batch() else { return 0 };
        let n = b.items.len();
        let mut by_id: HashMap<u64, Job> = b.items.into_iter().map(|i| (i.id, i.job)).collect();
        for r in results {
            let Some(job) = by_id.remove(&r.id) else {
                continue;
            };
            let outcome = match r.outcome {
                ItemOutcome::Ok { content_type, body } => Outcome::Ok { content_type, body },
                ItemOutcome::Refused { status, message } => Outcome::Refused { status, message },
                ItemOutcome::Failed { message, traceback } => {
                    self.handler_error(message, traceback)
                }
            };
            self.replies.push((job.reply, outcome));
        }
        n
    }

    /// The batch passed `batch_timeout` (or every deadline in it): requests whose
    /// own deadline passed get 504; a lone request is a plain one (504); the others
    /// run again in halves.
    pub(super) async fn batch_timed_out(&mut self) {
        let Some(b) = self.take_batch() else { return };
        let pid = self.running.as_ref().map(|r| r.pid).unwrap_or(0);
        let now = Instant::now();
        let svc = Metrics::service(self.service());
        self.deps.metrics.deadline_kills.get_or_create(&svc).inc();
        tracing::warn!(worker = %self.name(), pid, "a batch of {} passed its batch_timeout: killing the worker", b.items.len());
        let alone = b.items.len() == 1;
        let mut again = vec![];
        for it in b.items {
            if alone || it.deadline <= now {
                let cause = DeadlineCause {
                    worker: self.spec.index,
                    pid,
                    generation: self.generation,
                    request_timeout_ms: b.timeout.as_millis() as u64,
                    queued_ms: b.started.duration_since(it.job.received).as_millis() as u64,
                    ran_ms: now.duration_since(b.started).as_millis() as u64,
                };
                self.replies
                    .push((it.job.reply, Outcome::DeadlineKilled { cause }));
            } else {
                again.push(it);
            }
        }
        if !again.is_empty() {
            let crash = CrashCause::Exit(ExitDetail {
                worker: self.spec.index,
                pid,
                generation: self.generation,
                signal: Some("SIGKILL".into()),
                exit_code: None,
                oom_killed: false,
                description: "passed its batch_timeout and was killed".into(),
                workers_killed_by_this_request: 0,
                error_id: super::request::new_error_id(),
                log_tail: vec![],
            });
            self.bisect(&b.method, again, b.cap, crash);
        }
    }

    /// The worker died with a batch: a lone request is a plain one (crash count,
    /// poison, retry); a batch of several runs again in halves.
    pub(super) async fn batch_crashed(&mut self, b: BatchInFlight, pid: i32, cause: &ExitCause) {
        if b.items.len() == 1 || matches!(self.life.state, State::Stopping) {
            for it in b.items {
                let f = InFlight {
                    id: it.id,
                    job: it.job,
                    deadline: it.deadline,
                    started: b.started,
                    // Batched methods are declared safe to run again.
                    idempotent: true,
                    stream: None,
                };
                self.resolve_crashed(f, pid, cause).await;
            }
            return;
        }
        let tail = self.deps.logs.tail(self.spec.index, TAIL_LINES).await;
        let crash = self.crash_detail(pid, cause, 1, tail);
        self.bisect(&b.method, b.items, b.cap, crash);
    }

    /// Splits `items` in halves and queues each as a part of its own (at the front
    /// of the queue, in order); past the original batch's death cap, answers them
    /// all with `crash` instead.
    fn bisect(&mut self, method: &str, mut items: Vec<Item>, cap: u32, crash: CrashCause) {
        let Some(d) = self.deps.dispatcher.clone() else {
            return;
        };
        let deaths = items[0]
            .job
            .part
            .as_ref()
            .map(|p| p.deaths.clone())
            .unwrap_or_else(|| Arc::new(AtomicU32::new(0)));
        let n = deaths.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= cap {
            tracing::warn!(worker = %self.name(), "a batch of {method:?} has killed {n} workers (its cap): failing its {} remaining requests", items.len());
            for it in items {
                self.replies.push((
                    it.job.reply,
                    Outcome::Crashed {
                        cause: crash.clone(),
                    },
                ));
            }
            return;
        }
        self.deps
            .metrics
            .bisections
            .get_or_create(&Metrics::method(self.service(), method))
            .inc();
        d.record_bisection(method);
        let second = items.split_off(items.len().div_ceil(2));
        tracing::info!(worker = %self.name(), "bisecting a batch of {method:?}: {} + {} requests run again", items.len(), second.len());
        // The queue's front takes them in reverse: the first half ends up first.
        for half in [second, items] {
            let part = Arc::new(BatchPart {
                deaths: deaths.clone(),
            });
            for mut it in half.into_iter().rev() {
                it.job.part = Some(part.clone());
                d.requeue(it.job);
            }
        }
    }

    /// The worker broke the protocol during a batch: every request of it runs
    /// again elsewhere (the worker, not the requests, was at fault).
    pub(super) fn requeue_batch(&mut self) {
        let Some(b) = self.take_batch() else { return };
        if let Some(d) = self.deps.dispatcher.clone() {
            for it in b.items.into_iter().rev() {
                d.requeue(it.job);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_death_cap_is_twice_the_bisection_depth() {
        assert_eq!(super::death_cap(1), 2);
        assert_eq!(super::death_cap(2), 4);
        assert_eq!(super::death_cap(16), 10);
        assert_eq!(super::death_cap(17), 12);
        assert_eq!(super::death_cap(32), 12);
    }
}
