//! The coordinator's elastic half: a service whose worker count can change
//! (min_workers < max_workers) starts workers on demand and under load, lets idle
//! ones go after idle_timeout, proves itself at start when it may unload entirely,
//! and asks the instance's memory budget before every start.
//!
//! Invariants:
//! - decisions come from `scaling::decide` (pure); this file only carries them out;
//! - a worker is let go only after it was taken off the dispatcher's idle list, so
//!   no request is in flight on it or can reach it;
//! - a start that fails before READY answers the requests that wait for it with
//!   its cause (when no other worker can serve them), and the next start waits a
//!   backoff, so a broken model is not spawned once per request;
//! - every start and every let-go is logged with its reason and counted.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{Coordinator, Order, retire, wait_ready};
use crate::daemon::messages::Command;
use crate::daemon::metrics::{Metrics, ScaleLabels};
use crate::daemon::scaling::budget::Admission;
use crate::daemon::scaling::decide::{Decision, Seen, Start};
use crate::status::{Phase, WorkerStatus};

/// How often an elastic coordinator looks again while something is pending (a
/// start held back by the budget, an eviction under way).
const RECHECK: Duration = Duration::from_millis(250);

impl Coordinator {
    /// min_workers = 0: load one worker (in its turn among the instance's
    /// services), let `start` see it ready, then let it go. False when the service
    /// was stopped meanwhile (the coordinator ends).
    pub(super) async fn prove_at_start(
        &mut self,
        orders: &mut mpsc::UnboundedReceiver<Order>,
    ) -> bool {
        let proofs = self.shared.proofs.clone();
        let permit = tokio::select! {
            p = proofs.acquire_owned() => p.ok(),
            o = orders.recv() => {
                if let Some(Order::Stop(reply)) = o {
                    let _ = reply.send(());
                }
                return false;
            }
        };
        self.next_wid += 1;
        let wid = self.next_wid;
        let spec = self.slots[0].spec(&self.service, wid, true, false, Duration::ZERO);
        let handle = crate::daemon::worker::start(spec, self.deps.clone());
        self.slots[0].handle = Some(handle);
        self.publish();
        let limit = self.service.startup_timeout + Duration::from_secs(5);
        let ready = tokio::select! {
            r = wait_ready(self.handle(0), limit) => r.is_ok(),
            o = orders.recv() => {
                // The start failed elsewhere, or a stop came: stop it and end.
                self.stop_all().await;
                if let Some(Order::Stop(reply)) = o {
                    let _ = reply.send(());
                }
                return false;
            }
        };
        if ready {
            self.observe_memory(0);
            let d = self
                .deps
                .dispatcher
                .clone()
                .expect("worker services have a dispatcher");
            if d.take_idle(wid).is_some() {
                let patience = self.service.request_timeout + Duration::from_secs(5);
                retire(self.handle(0), patience).await;
                self.slots[0].handle = None;
                self.publish();
                self.mark_unloaded(
                    "proven at start (min_workers = 0), then unloaded until a request comes".into(),
                );
                tracing::info!(service = %self.service.name, "loaded once to prove it, then unloaded (min_workers = 0)");
            }
        }
        // A failed proof fails the start: the supervisor stops the instance.
        drop(permit);
        true
    }

    /// When to look again with nothing else happening.
    pub(super) fn next_check(&self) -> Option<Instant> {
        let now = Instant::now();
        let pending =
            (self.holdup.is_some() || !self.letting_go.is_empty() || self.retry_at.is_some())
                .then_some(now + RECHECK);
        let seen = self.seen(now);
        let decided = self.scaler.next_check(seen, &self.service.scaling, now);
        // Workers that may go: a worker becomes idle without telling anyone, so
        // look again within a second (or half the idle_timeout, if shorter).
        let idle_watch = match self.service.scaling.idle_timeout {
            Some(t) if seen.live > self.service.scaling.min_workers => {
                Some(now + (t / 2).min(Duration::from_secs(1)))
            }
            _ => None,
        };
        [pending, decided, idle_watch].into_iter().flatten().min()
    }

    fn seen(&self, now: Instant) -> Seen {
        let d = self
            .deps
            .dispatcher
            .as_ref()
            .expect("worker services have a dispatcher");
        let live = self
            .live()
            .filter(|h| !self.letting_go.iter().any(|(w, _)| *w == h.wid))
            .filter(|h| h.status.borrow().state != Phase::Stopped)
            .count() as u32;
        let (queued, longest_idle) = d.load();
        Seen {
            queued,
            live,
            max: self.service.workers,
            longest_idle: longest_idle.map(|(w, since)| (w, now.saturating_duration_since(since))),
        }
    }

    /// Looks at the service and starts or lets go a worker if the decision says.
    pub(super) fn scale(&mut self) {
        self.reap();
        let now = Instant::now();
        let seen = self.seen(now);
        match self.scaler.decide(seen, &self.service.scaling, now) {
            Decision::Hold => {
                if seen.queued == 0 && self.holdup.take().is_some() {
                    self.dispatcher().set_holdup(None);
                }
            }
            Decision::Start(why) => self.start_one(why, seen),
            Decision::Unload { wid, idle } => self.let_go(wid, idle),
        }
    }

    fn dispatcher(&self) -> &crate::daemon::dispatch::Dispatcher {
        self.deps
            .dispatcher
            .as_ref()
            .expect("worker services have a dispatcher")
    }

    fn start_one(&mut self, why: Start, seen: Seen) {
        let now = Instant::now();
        if self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.retry_at = None;
        let Some(i) = self.slots.iter().position(|s| s.handle.is_none()) else {
            return;
        };
        if let Some(b) = self.shared.budget.clone() {
            match b.admit(self.service.name.as_str(), self.slots[i].index) {
                Admission::Go => {}
                Admission::Wait(msg) => {
                    self.held_since.get_or_insert(now);
                    if self.holdup.as_deref() != Some(msg.as_str()) {
                        tracing::info!(service = %self.service.name, "a worker waits to start: {msg}");
                        self.dispatcher().set_holdup(Some(format!(
                            "service {}: no worker could be loaded in time: {msg}",
                            self.service.name
                        )));
                        self.holdup = Some(msg);
                    }
                    return;
                }
            }
        }
        if self.holdup.take().is_some() {
            self.dispatcher().set_holdup(None);
        }
        let waited = self
            .held_since
            .take()
            .map(|t| now.saturating_duration_since(t));
        let handle = self.spawn_as(i, true, true);
        let wid = handle.wid;
        tokio::spawn(watch_start(
            handle.status.clone(),
            wid,
            self.started_tx.clone(),
            now,
        ));
        self.slots[i].handle = Some(handle);
        self.publish();
        tracing::info!(
            service = %self.service.name,
            "starting worker {} ({} of at most {}): {}",
            self.slots[i].index,
            seen.live + 1,
            self.service.workers,
            why.describe(&self.service.scaling)
        );
        self.count_scale("up", why.label());
        self.load.lock().scale_ups += 1;
        if why == Start::Demand {
            self.load.lock().last_cold_start_wait_ms =
                Some(waited.unwrap_or_default().as_millis() as u64);
        }
        self.starts.push((wid, why));
    }

    /// A worker started by scaling is ready, or failed before it was.
    pub(super) fn on_started(&mut self, wid: u64, result: Result<Duration, String>) {
        let Some(k) = self.starts.iter().position(|(w, _)| *w == wid) else {
            return;
        };
        let (_, why) = self.starts.remove(k);
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.handle.as_ref().is_some_and(|h| h.wid == wid))
        else {
            return;
        };
        if let Some(b) = &self.shared.budget {
            b.release(self.service.name.as_str(), self.slots[i].index);
        }
        match result {
            Ok(took) => {
                self.failed_starts = 0;
                self.dispatcher().clear_failure();
                self.observe_memory(i);
                let name = self.service.name.as_str();
                // The process's own spawn to READY, as its actor measured it.
                let load_ms = self.handle(i).status.borrow().load_ms;
                let took = load_ms.map_or(took, Duration::from_millis);
                if why == Start::Demand {
                    let mut r = self.load.lock();
                    r.cold_starts += 1;
                    r.last_cold_start_ms = Some(took.as_millis() as u64);
                    r.unloaded = None;
                    drop(r);
                    let m = &self.deps.metrics;
                    m.cold_starts.get_or_create(&Metrics::service(name)).inc();
                    m.cold_start_seconds
                        .get_or_create(&Metrics::service(name))
                        .observe(took.as_secs_f64());
                }
                self.load.lock().unloaded = None;
                tracing::info!(service = %name, "worker {} is ready after {:.2}s ({})", self.slots[i].index, took.as_secs_f64(), why.label());
            }
            Err(reason) => {
                self.failed_starts += 1;
                let backoff = self.service.restart.backoff(self.failed_starts, 1.0);
                let until = Instant::now() + backoff;
                self.retry_at = Some(until);
                let message = format!(
                    "service {}: a worker started on demand failed before it was ready: {reason} (its output: `paddock logs {}`)",
                    self.service.name, self.service.name
                );
                tracing::warn!(service = %self.service.name, "{message}; the next start waits {:.1}s", backoff.as_secs_f64());
                let others = self
                    .live()
                    .filter(|h| h.wid != wid)
                    .any(|h| h.status.borrow().state.serving());
                if !others {
                    self.dispatcher().fail_start(message, until);
                }
                let h = self.handle(i);
                let _ = h.commands.send(Command::Stop);
            }
        }
    }

    /// Lets worker `wid` go (idle for `idle`), if it is still idle.
    fn let_go(&mut self, wid: u64, idle: Duration) {
        let Some((_, tx)) = self.dispatcher().take_idle(wid) else {
            return;
        };
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.handle.as_ref().is_some_and(|h| h.wid == wid))
        {
            self.observe_memory(i);
        }
        let _ = tx.send(Command::Retire);
        let timeout = self.service.scaling.idle_timeout.unwrap_or_default();
        let why = format!(
            "idle for {} (idle_timeout = {})",
            crate::timefmt::human(idle),
            crate::timefmt::config_duration(timeout)
        );
        let index = self
            .live()
            .find(|h| h.wid == wid)
            .map(|h| h.status.borrow().index)
            .unwrap_or_default();
        tracing::info!(service = %self.service.name, "unloading worker {index}: {why}");
        self.count_scale("down", "idle_timeout");
        self.load.lock().scale_downs += 1;
        self.letting_go.push((wid, why));
    }

    /// Vacates the slots whose worker is gone (let go, evicted, or failed to
    /// start), and notes when the service is left with none.
    pub(super) fn reap(&mut self) {
        let mut gone = vec![];
        for s in &mut self.slots {
            let Some(h) = &s.handle else { continue };
            if h.status.borrow().state == Phase::Stopped {
                gone.push(h.wid);
                s.handle = None;
            }
        }
        if gone.is_empty() {
            return;
        }
        let mut last_why = None;
        for wid in &gone {
            if let Some(k) = self.letting_go.iter().position(|(w, _)| w == wid) {
                last_why = Some(self.letting_go.remove(k).1);
            }
            let mut r = self.load.lock();
            if let Some(k) = r.evicted.iter().position(|(w, _)| w == wid) {
                let why = r.evicted.remove(k).1;
                drop(r);
                self.count_scale("down", "evicted");
                last_why = Some(why);
            }
        }
        self.publish();
        if self.live().next().is_none() {
            let why = last_why.unwrap_or_else(|| "its last worker stopped".into());
            tracing::info!(service = %self.service.name, "unloaded: {why}");
            self.mark_unloaded(why);
        }
    }

    fn mark_unloaded(&self, why: String) {
        self.load.lock().unloaded = Some((crate::timefmt::now(), why));
    }

    /// Records the most slot `i`'s worker has held (what the next start may need).
    fn observe_memory(&self, i: usize) {
        if let Some(pid) = self.handle(i).status.borrow().pid {
            for rss in paddock_sys::procs::trees_peak_rss(&[pid])
                .into_iter()
                .flatten()
            {
                self.load.observe(rss);
            }
        }
    }

    fn count_scale(&self, direction: &str, reason: &str) {
        self.deps
            .metrics
            .scale_events
            .get_or_create(&ScaleLabels {
                service: self.service.name.to_string(),
                direction: direction.into(),
                reason: reason.into(),
            })
            .inc();
    }
}

/// Waits until a worker started by scaling is ready (its time from `since`) or
/// has failed (why), and says so to its coordinator.
async fn watch_start(
    mut st: watch::Receiver<WorkerStatus>,
    wid: u64,
    tx: mpsc::UnboundedSender<(u64, Result<Duration, String>)>,
    since: Instant,
) {
    let r = st
        .wait_for(|x| {
            x.state.serving()
                || matches!(
                    x.state,
                    Phase::Failed | Phase::Stopped | Phase::CrashLooping
                )
        })
        .await;
    let result = match r {
        Ok(s) if s.state.serving() => Ok(since.elapsed()),
        Ok(s) => Err(super::not_ready_reason(&s)),
        Err(_) => Err("its actor ended".into()),
    };
    let _ = tx.send((wid, result));
}
