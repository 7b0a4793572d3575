//! The service coordinator: one task per service that owns its worker actors'
//! handles, and replaces workers one at a time — for `paddock reload` and for
//! recycling (max_requests, max_rss).
//!
//! Invariants:
//! - one replacement at a time per service;
//! - worker services: the replacement is spawned and proven ready *before* the old
//!   worker is retired, and a retired worker finishes its current request first, so
//!   a replacement never takes the service's capacity down and never fails a request;
//! - process services (whose port may be fixed) are replaced in place: stopped, then
//!   started again on the same port;
//! - elastic services (`elastic.rs`): a slot holds a worker or is vacant; workers
//!   start and go as `scaling::decide` says, within the memory budget, and a
//!   worker is let go only from its dispatcher's idle list (never mid-request).

mod elastic;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::dispatch::Dispatcher;
use super::messages::Command;
use super::scaling::Load;
use super::scaling::budget::Budget;
use super::scaling::decide::{Scaler, Start};
use super::worker::{self, Ask, Deps, Handle};
use crate::config::{Kind, ReloadStrategy, Service};
use crate::status::{Phase, WorkerStatus};

/// Everything needed to start another actor for a slot.
struct Slot {
    index: u32,
    port: Option<u16>,
    argv: Vec<String>,
    listener: Option<Arc<std::net::TcpListener>>,
    cwd: std::path::PathBuf,
    env_set: BTreeMap<String, String>,
    /// The slot's generation counter (see `worker::Spec::generations`).
    generations: Arc<std::sync::atomic::AtomicU64>,
    /// Its worker; None while the slot is vacant (an elastic service's worker that
    /// was unloaded, evicted, or never started).
    handle: Option<Handle>,
}

impl Slot {
    /// What an actor for this slot is started with: `wid`, whether it is part of
    /// a start that must succeed (`initial`), whether scaling started it
    /// (`on_demand`), and how long it waits first.
    fn spec(
        &self,
        service: &Arc<Service>,
        wid: u64,
        initial: bool,
        on_demand: bool,
        start_delay: Duration,
    ) -> worker::Spec {
        worker::Spec {
            service: service.clone(),
            index: self.index,
            wid,
            port: self.port,
            argv: self.argv.clone(),
            listener: self.listener.clone(),
            cwd: self.cwd.clone(),
            env_set: self.env_set.clone(),
            initial,
            on_demand,
            start_delay,
            generations: self.generations.clone(),
        }
    }
}

/// Why a reload did not replace every worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    #[error("no service named {0:?}")]
    NoService(String),
    #[error("service {0} is stopping")]
    Stopping(String),
    /// A replacement did not become ready: what happened to it.
    #[error("{0}")]
    Replacement(String),
}

pub enum Order {
    /// Replace every worker, one at a time; the reply lists what was replaced.
    Reload(oneshot::Sender<Result<Vec<String>, ReloadError>>),
    /// Stop every worker; reply when all are gone.
    Stop(oneshot::Sender<()>),
}

/// The supervisor's handle to a service.
pub struct ServiceHandle {
    pub config: Arc<Service>,
    pub port: Option<u16>,
    pub workers: watch::Receiver<Vec<watch::Receiver<WorkerStatus>>>,
    pub orders: mpsc::UnboundedSender<Order>,
    pub dispatcher: Option<Dispatcher>,
    pub initial_workers: usize,
    /// Loads, unloads, cold starts and evictions (for status and metrics).
    pub load: Load,
}

/// What a coordinator shares with the others of the instance.
#[derive(Clone)]
pub struct Shared {
    /// The instance's memory budget, if it has one.
    pub budget: Option<Arc<Budget>>,
    /// One proof at a time: services with min_workers = 0 load one worker at start,
    /// one service after another, so the proofs fit the budget.
    pub proofs: Arc<tokio::sync::Semaphore>,
    /// Wakes when any worker of the instance is gone.
    pub departures: Arc<tokio::sync::Notify>,
}

pub struct Plan {
    pub index: u32,
    pub port: Option<u16>,
    pub argv: Vec<String>,
    pub listener: Option<Arc<std::net::TcpListener>>,
    pub cwd: std::path::PathBuf,
    pub env_set: BTreeMap<String, String>,
}

pub fn start(
    service: Arc<Service>,
    plans: Vec<Plan>,
    mut deps: Deps,
    shared: Shared,
) -> ServiceHandle {
    let (ask_tx, asks) = mpsc::unbounded_channel();
    deps.coordinator = ask_tx;
    let mut next_wid = 0u64;
    // Started now: min_workers (all of a fixed service). A service that may unload
    // entirely is proven by one worker, started by its coordinator in its turn.
    let now = service.scaling.min_workers as usize;
    let mut slots: Vec<Slot> = plans
        .into_iter()
        .map(|p| Slot {
            index: p.index,
            port: p.port,
            argv: p.argv,
            listener: p.listener,
            cwd: p.cwd,
            env_set: p.env_set,
            generations: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            handle: None,
        })
        .collect();
    for slot in slots.iter_mut().take(now) {
        next_wid += 1;
        let delay = service.start_stagger * slot.index;
        let spec = slot.spec(&service, next_wid, true, false, delay);
        slot.handle = Some(worker::start(spec, deps.clone()));
    }
    let (workers_tx, workers) = watch::channel(
        slots
            .iter()
            .filter_map(|s| s.handle.as_ref().map(|h| h.status.clone()))
            .collect(),
    );
    let (orders, orders_rx) = mpsc::unbounded_channel();
    let load = Load::default();
    let handle = ServiceHandle {
        config: service.clone(),
        port: slots.first().and_then(|s| s.port),
        workers,
        orders,
        dispatcher: deps.dispatcher.clone(),
        initial_workers: now.max(1),
        load: load.clone(),
    };
    let (started_tx, started) = mpsc::unbounded_channel();
    let c = Coordinator {
        prove: now == 0,
        service,
        deps,
        slots,
        extra: vec![],
        next_wid,
        workers_tx,
        load,
        shared,
        scaler: Scaler::default(),
        starts: vec![],
        started_tx,
        started,
        letting_go: vec![],
        retry_at: None,
        failed_starts: 0,
        holdup: None,
        held_since: None,
    };
    tokio::spawn(c.run(orders_rx, asks));
    handle
}

struct Coordinator {
    service: Arc<Service>,
    deps: Deps,
    slots: Vec<Slot>,
    /// Replacements not yet swapped into their slot (visible in status).
    extra: Vec<watch::Receiver<WorkerStatus>>,
    next_wid: u64,
    workers_tx: watch::Sender<Vec<watch::Receiver<WorkerStatus>>>,
    load: Load,
    shared: Shared,
    /// min_workers = 0: one worker is loaded at start, proven ready, and let go.
    prove: bool,
    scaler: Scaler,
    /// Workers started by scaling that are not ready yet: wid, why.
    starts: Vec<(u64, Start)>,
    /// Each start's outcome: its wid, and its time to READY or why it failed.
    started_tx: mpsc::UnboundedSender<(u64, Result<Duration, String>)>,
    started: mpsc::UnboundedReceiver<(u64, Result<Duration, String>)>,
    /// Workers asked to go (idle_timeout) that have not exited yet, and why.
    letting_go: Vec<(u64, String)>,
    /// After a start failed: no new start before this (its requests were told).
    retry_at: Option<Instant>,
    failed_starts: u32,
    /// Why the budget holds a start back, as last logged.
    holdup: Option<String>,
    /// Since when a start has waited for the budget.
    held_since: Option<Instant>,
}

impl Coordinator {
    async fn run(
        mut self,
        mut orders: mpsc::UnboundedReceiver<Order>,
        mut asks: mpsc::UnboundedReceiver<Ask>,
    ) {
        if self.prove && !self.prove_at_start(&mut orders).await {
            return;
        }
        let elastic = self.service.elastic();
        let dispatcher = self.deps.dispatcher.clone();
        let departures = self.shared.departures.clone();
        loop {
            let next = if elastic { self.next_check() } else { None };
            tokio::select! {
                biased;
                o = orders.recv() => match o {
                    Some(Order::Stop(reply)) => {
                        self.stop_all().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(Order::Reload(reply)) => {
                        let mut done = vec![];
                        let mut result = Ok(());
                        self.reap();
                        for i in 0..self.slots.len() {
                            if self.slots[i].handle.is_none() {
                                continue;
                            }
                            match self.replace(i, "reload", self.service.reload).await {
                                Ok(line) => done.push(line),
                                Err(e) => { result = Err(e); break; }
                            }
                        }
                        let _ = reply.send(result.map(|_| done));
                    }
                    None => {
                        self.stop_all().await;
                        return;
                    }
                },
                a = asks.recv() => {
                    if let Some(Ask::Recycle { wid, reason, room_for_two }) = a
                        && let Some(i) = self.slots.iter().position(|s| s.handle.as_ref().is_some_and(|h| h.wid == wid))
                    {
                        let how = self.recycle_strategy(i, room_for_two);
                        let because = match (room_for_two, how) {
                            (true, _) => "",
                            (false, ReloadStrategy::StopFirst) => ", as its device is not known to have room for a second copy",
                            (false, ReloadStrategy::StartFirst) => ", though its device is not known to have room for a second copy: no other worker is ready",
                        };
                        tracing::info!(service = %self.service.name, "recycling worker {} ({}{because}): {reason}", self.slots[i].index, how.as_str());
                        if let Err(e) = self.replace(i, "recycle", how).await {
                            tracing::warn!(service = %self.service.name, "recycle failed: {e}");
                        }
                    }
                }
                Some((wid, result)) = self.started.recv() => self.on_started(wid, result),
                _ = async { dispatcher.as_ref().expect("elastic services have a dispatcher").demand().await }, if elastic => {}
                _ = departures.notified(), if elastic => {}
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {}
            }
            if elastic {
                self.scale();
            }
        }
    }

    fn publish(&self) {
        let mut v: Vec<_> = self.live().map(|h| h.status.clone()).collect();
        v.extend(self.extra.iter().cloned());
        let _ = self.workers_tx.send(v);
    }

    /// The slots' workers (vacant slots have none).
    fn live(&self) -> impl Iterator<Item = &Handle> {
        self.slots.iter().filter_map(|s| s.handle.as_ref())
    }

    /// Slot `i`'s worker (the caller knows there is one).
    fn handle(&self, i: usize) -> &Handle {
        self.slots[i]
            .handle
            .as_ref()
            .expect("the slot holds a worker")
    }

    /// Starts another actor for slot `i`. `on_probation`: a replacement that must
    /// prove itself once (any failure before READY ends it, no retry: the old
    /// worker keeps serving); otherwise it restarts as any worker does.
    fn spawn_for(&mut self, i: usize, on_probation: bool) -> Handle {
        self.spawn_as(i, on_probation, false)
    }

    /// `spawn_for`; `on_demand`: started by scaling (see `worker::Spec`).
    fn spawn_as(&mut self, i: usize, on_probation: bool, on_demand: bool) -> Handle {
        self.next_wid += 1;
        let slot = &self.slots[i];
        let mut deps = self.deps.clone();
        if on_probation {
            // Its verdict is read from its status, not from the start-up channel.
            deps.startup = mpsc::unbounded_channel().0;
        }
        let spec = slot.spec(
            &self.service,
            self.next_wid,
            on_probation,
            on_demand,
            Duration::ZERO,
        );
        worker::start(spec, deps)
    }

    /// How to recycle slot `i` (see [`recycle_strategy`]).
    fn recycle_strategy(&self, i: usize, room_for_two: bool) -> ReloadStrategy {
        let others_ready = self.slots.iter().enumerate().any(|(j, s)| {
            j != i
                && s.handle
                    .as_ref()
                    .is_some_and(|h| h.status.borrow().state.serving())
        });
        recycle_strategy(self.service.reload, room_for_two, others_ready)
    }

    /// Replaces slot `i`'s worker, the `how` way; returns a line describing what
    /// was done.
    async fn replace(
        &mut self,
        i: usize,
        why: &str,
        how: ReloadStrategy,
    ) -> Result<String, ReloadError> {
        let name = format!("{}/{}", self.service.name, self.slots[i].index);
        let old_pid = self.handle(i).status.borrow().pid;
        let limit = self.service.startup_timeout + Duration::from_secs(5);
        let patience = self.service.request_timeout + Duration::from_secs(5);
        match how {
            ReloadStrategy::StopFirst => {
                // In place: the old worker finishes its request and goes first (a
                // fixed port, a file or a GPU that cannot be held twice).
                retire(self.handle(i), patience).await;
                let new = self.spawn_for(i, false);
                self.slots[i].handle = Some(new);
                self.publish();
                if let Err(e) = wait_ready(self.handle(i), limit).await {
                    let tail = self.tail_of(i).await;
                    return Err(ReloadError::Replacement(format!(
                        "{name}: the replacement failed before it was ready: {e}; the old worker was already retired (reload = \"stop-first\"), so the new one keeps retrying{tail}"
                    )));
                }
            }
            ReloadStrategy::StartFirst => {
                let new = self.spawn_for(i, true);
                self.extra.push(new.status.clone());
                self.publish();
                if let Err(e) = wait_ready(&new, limit).await {
                    let _ = new.commands.send(Command::Stop);
                    let mut st = new.status.clone();
                    let _ = st.wait_for(|x| x.state == Phase::Stopped).await;
                    self.extra.clear();
                    self.publish();
                    let generation = new.status.borrow().generation;
                    let tail = self.tail_of(i).await;
                    return Err(ReloadError::Replacement(format!(
                        "{name}: the replacement (generation {generation}) failed before it was ready: {e}; it was stopped, and the old worker keeps serving{tail}"
                    )));
                }
                let old = self.slots[i]
                    .handle
                    .replace(new)
                    .expect("the slot held a worker");
                self.extra.clear();
                self.publish_with(&old);
                retire(&old, patience).await;
                self.publish();
            }
        }
        let new_pid = self.handle(i).status.borrow().pid;
        let line = format!(
            "{name}: pid {} replaced by pid {} ({why})",
            old_pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            new_pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
        );
        tracing::info!("{line}");
        Ok(line)
    }

    /// The slot's last log lines, formatted to follow an error message.
    async fn tail_of(&self, i: usize) -> String {
        let tail = self.deps.logs.tail(self.slots[i].index, 10).await;
        let name = format!("{}/{}", self.service.name, self.slots[i].index);
        super::start_report::tail_block(&name, &tail)
            .map(|t| format!("\n{t}"))
            .unwrap_or_default()
    }

    /// Publishes the slots plus a worker that is being retired.
    fn publish_with(&self, old: &Handle) {
        let mut v: Vec<_> = self.live().map(|h| h.status.clone()).collect();
        v.push(old.status.clone());
        let _ = self.workers_tx.send(v);
    }

    /// Stops every worker. Worker services drain: each worker answers the request it
    /// is serving (up to its request_timeout), then stops; process services are
    /// stopped at once (SIGTERM, then SIGKILL after stop_timeout).
    async fn stop_all(&mut self) {
        if self.service.kind == Kind::Worker {
            for h in self.live() {
                let _ = h.commands.send(Command::Retire);
            }
            let patience = self.service.request_timeout + Duration::from_secs(1);
            let deadline = Instant::now() + patience;
            for s in self.slots.iter().filter(|s| s.handle.is_some()) {
                let h = s.handle.as_ref().expect("filtered");
                let mut st = h.status.clone();
                let drained = tokio::time::timeout_at(
                    deadline.into(),
                    st.wait_for(|x| x.state == Phase::Stopped),
                )
                .await
                .is_ok();
                if !drained {
                    tracing::warn!(
                        "{}/{} did not finish its request within request_timeout: stopping it",
                        self.service.name,
                        s.index
                    );
                }
            }
        }
        for h in self.live() {
            let _ = h.commands.send(Command::Stop);
        }
        for h in self.live() {
            let mut st = h.status.clone();
            // Err means the actor ended, which it does only once stopped.
            let _ = st.wait_for(|x| x.state == Phase::Stopped).await;
        }
        self.publish();
    }
}

/// Asks a worker to finish its request and stop; waits until it has — at most
/// `patience`, then it is stopped outright (SIGTERM, then SIGKILL).
async fn retire(h: &Handle, patience: Duration) {
    let _ = h.commands.send(Command::Retire);
    let mut st = h.status.clone();
    let stopped = tokio::time::timeout(patience, st.wait_for(|x| x.state == Phase::Stopped))
        .await
        .is_ok();
    if !stopped {
        tracing::warn!(
            "worker {} did not retire within {}s: stopping it",
            h.status.borrow().index,
            patience.as_secs()
        );
        let _ = h.commands.send(Command::Stop);
        let _ = st.wait_for(|x| x.state == Phase::Stopped).await;
    }
}

/// Why a replacement did not become ready: its last failure, or the wait.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotReady(String);

async fn wait_ready(h: &Handle, limit: Duration) -> Result<(), NotReady> {
    let mut st = h.status.clone();
    let deadline = Instant::now() + limit;
    let r = tokio::time::timeout_at(
        deadline.into(),
        st.wait_for(|x| {
            matches!(
                x.state,
                Phase::Ready
                    | Phase::Busy
                    | Phase::Failed
                    | Phase::Stopped
                    | Phase::Backoff
                    | Phase::CrashLooping
            )
        }),
    )
    .await;
    match r {
        Err(_) => Err(NotReady(format!("not ready within {}s", limit.as_secs()))),
        Ok(Err(_)) => Err(NotReady("the worker's actor ended".into())),
        Ok(Ok(s)) if s.state.serving() => Ok(()),
        Ok(Ok(s)) => Err(NotReady(not_ready_reason(&s))),
    }
}

/// Why a worker that stopped short of ready is not: its reason, else its last
/// exit, else its state.
fn not_ready_reason(s: &WorkerStatus) -> String {
    s.reason
        .clone()
        .or_else(|| s.last_exit.as_ref().map(|c| c.description.clone()))
        .unwrap_or_else(|| format!("it is {}", s.state))
}

/// How a recycle replaces a worker: the service's `reload` strategy; but when the
/// worker's device has no room for a second copy (max_gpu_memory), the old worker
/// goes first — unless no other worker is ready, since a recycle never takes the
/// service to zero: then the replacement is tried beside it, and if it cannot load,
/// the old worker keeps serving.
fn recycle_strategy(
    reload: ReloadStrategy,
    room_for_two: bool,
    others_ready: bool,
) -> ReloadStrategy {
    match (room_for_two, others_ready) {
        (true, _) => reload,
        (false, true) => ReloadStrategy::StopFirst,
        (false, false) => ReloadStrategy::StartFirst,
    }
}

#[cfg(test)]
mod recycle_tests {
    use super::*;

    #[test]
    fn a_full_device_stops_first_but_never_takes_the_service_to_zero() {
        use ReloadStrategy::{StartFirst, StopFirst};
        // Room on the device: the service's own strategy.
        assert_eq!(recycle_strategy(StartFirst, true, false), StartFirst);
        assert_eq!(recycle_strategy(StopFirst, true, true), StopFirst);
        // No room, others serve meanwhile: the old worker goes first.
        assert_eq!(recycle_strategy(StartFirst, false, true), StopFirst);
        // No room and it is the last ready worker: it keeps serving until the
        // replacement is ready (or failed).
        assert_eq!(recycle_strategy(StartFirst, false, false), StartFirst);
        assert_eq!(recycle_strategy(StopFirst, false, false), StartFirst);
    }
}
