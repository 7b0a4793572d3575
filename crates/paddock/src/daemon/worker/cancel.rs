//! A durable job cancelled while this worker runs it (`DELETE /v1/jobs/{id}` on a
//! running job): the pump requests the job's `Abort`, and the actor acts on it here.
//!
//! Invariants:
//! - a streaming handler gets CANCEL, like a client that left: its generator is
//!   closed and the worker serves on;
//! - any other handler cannot be interrupted: its worker is killed and replaced,
//!   like a deadline kill, and the kill is not counted as a failure (no crash loop
//!   from cancels);
//! - in a batch, the cancelled requests are answered `Cancelled`, the others go
//!   back to the queue uncounted (as in a bisection), never failed;
//! - whatever the attempt then reports is dropped by the store, which holds the job
//!   `cancelled` already.

use std::sync::Arc;

use super::Actor;
use crate::daemon::lifecycle::Event;
use crate::daemon::messages::{Abort, Outcome};

impl Actor {
    /// The cancels that could reach what this worker runs now (none once a
    /// stream's CANCEL went out).
    pub(super) fn aborts(&self) -> Vec<Arc<Abort>> {
        if let Some(f) = &self.inflight {
            let cancelled = f.stream.as_ref().is_some_and(|s| s.cancelled_at.is_some());
            return f.job.abort.iter().filter(|_| !cancelled).cloned().collect();
        }
        self.batch
            .iter()
            .flat_map(|b| &b.items)
            .filter_map(|it| it.job.abort.clone())
            .collect()
    }

    /// A cancel was requested for something this worker runs.
    pub(super) async fn on_abort(&mut self) -> Option<Event> {
        let pid = self.running.as_ref().map_or(0, |r| r.pid);
        if self.stream().is_some() {
            self.cancel_stream("its job was cancelled").await;
            return self.stream_finished();
        }
        if self.inflight.is_some() {
            tracing::info!(worker = %self.name(), pid, "its job was cancelled while it ran: killing the worker (not counted as a failure)");
            self.finish(Outcome::Cancelled);
            return Some(Event::Cancelled);
        }
        let b = self.take_batch()?;
        tracing::info!(worker = %self.name(), pid, "a job of its batch of {} was cancelled: killing the worker, the others go back to the queue", b.items.len());
        let dispatcher = self.deps.dispatcher.clone();
        for it in b.items.into_iter().rev() {
            if it.job.abort.as_ref().is_some_and(|a| a.is_requested()) {
                self.replies.push((it.job.reply, Outcome::Cancelled));
            } else if let Some(d) = &dispatcher {
                d.requeue(it.job);
            }
        }
        Some(Event::Cancelled)
    }
}

/// Resolves when any of `aborts` is requested; never when there is none.
pub(super) async fn requested(aborts: Vec<Arc<Abort>>) {
    if aborts.is_empty() {
        return std::future::pending().await;
    }
    let mut waits: Vec<_> = aborts.iter().map(|a| Box::pin(a.requested())).collect();
    std::future::poll_fn(|cx| {
        for w in &mut waits {
            if w.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}
