//! The worker actor: one task owns one worker slot of a service — its process, its
//! protocol socket, its timers, its probes, the request it is serving — and drives
//! the [`Lifecycle`] state machine.
//!
//! One concern per file: `handle.rs` (what others hold and send), `conn.rs` (the
//! protocol connection and frame checks), `request.rs` (the request being served,
//! its answer, retries and recycling), `process.rs` (spawn, probes, exit),
//! `cancel.rs` (a running job's cancel). This file
//! is the actor itself: its state, its select loop, its timers and the carrying out
//! of the lifecycle's actions.
//!
//! Invariants:
//! - only this task signals its process group, so a kill can never hit a newer
//!   generation by mistake;
//! - at most one request is outstanding, and only a reply carrying exactly its id
//!   (generation in the high bits) can answer it; anything else from the worker is a
//!   protocol violation that kills it;
//! - after any exit the whole process group is SIGKILLed and forgotten by the
//!   registry before anything else is spawned: a crashed worker's children never
//!   linger;
//! - the request a dying worker held is answered (502/504) or, when the policy says
//!   so, retried elsewhere — never dropped;
//! - the status other tasks read is published through a `watch` channel after every
//!   transition; nobody else holds the state.
//! - the answer to a finished request is held only until the worker has been given
//!   its next one (or found none), never across a wait on the worker: the worker is
//!   busy again before the HTTP side runs, and no answer waits on a slow worker.

mod batch;
mod cancel;
mod conn;
#[cfg(test)]
mod fake;
mod handle;
mod inflight;
mod launch;
mod process;
mod request;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::sleep_until;

use super::lifecycle::{Action, Clock, Event, Lifecycle, Policy, State};
use super::messages::{Command, Job, Outcome};
use super::metrics::Metrics;
use crate::config::Kind;
use crate::status::{ExitCause, Phase, WorkerStatus};

use batch::BatchInFlight;
use conn::{Conn, next_frame};
use inflight::InFlight;
use process::{Running, not_running, wait};

pub use handle::{Ask, Deps, Handle, Spec, StartupEvent, TAIL_LINES, start};
pub use launch::{Launcher, OsLauncher, Proc};

/// The actor's timers. It sleeps only until the earliest one that is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// One of the lifecycle's clocks (startup, backoff, socket closed).
    Life(Clock),
    /// The request being served reached request_timeout.
    Request,
    /// A process service's readiness or liveness probe is due.
    Probe,
    /// Time to compare the worker's memory with max_rss.
    Rss,
    /// A streaming worker was silent for stream_idle_timeout.
    StreamIdle,
    /// A stream's client took nothing for stream_write_timeout.
    StreamWrite,
    /// A cancelled stream did not end within cancel_grace.
    CancelGrace,
}

/// How long past a due deadline the actor keeps reading an answer that is already
/// arriving (see `Actor::answer_unread`).
const LATE_READ_GRACE: Duration = Duration::from_secs(1);

struct Actor {
    spec: Spec,
    deps: Deps,
    status: watch::Sender<WorkerStatus>,
    me: mpsc::UnboundedSender<Command>,
    life: Lifecycle,
    running: Option<Running>,
    conn: Option<Conn>,
    inflight: Option<InFlight>,
    /// The batch being served (never at the same time as `inflight`).
    batch: Option<BatchInFlight>,
    generation: u64,
    seq: u32,
    served: u64,
    recycle_after: u64,
    recycle_asked: bool,
    /// Whether the dispatcher was told this worker is crash-looping.
    down: bool,
    announced: bool,
    crashed_at: Option<Instant>,
    last_exit: Option<ExitCause>,
    /// Forks with several OS threads the slot's processes reported.
    forks_with_threads: u64,
    last_fork: Option<String>,
    /// The SDK the process now running said it runs (HELLO).
    sdk: Option<crate::status::WorkerSdk>,
    /// The process now running: its spawn to READY.
    load_ms: Option<u64>,
    next_probe: Instant,
    /// When to compare the worker's memory with max_rss next (a fixed instant, so
    /// that a stream of requests cannot keep postponing it).
    next_rss_check: Instant,
    last_progress: String,
    ready_since: Option<String>,
    pending: VecDeque<Event>,
    /// When a deadline timer first found the worker's answer still unread in the
    /// socket (the daemon was paused, or busy): it is read before any kill, for at
    /// most `LATE_READ_GRACE`.
    late_read_since: Option<Instant>,
    /// Answers not sent yet (see `finish`).
    replies: Vec<(oneshot::Sender<Outcome>, Outcome)>,
    /// This service's in-flight gauge.
    in_flight: prometheus_client::metrics::gauge::Gauge,
}

/// The `Retry-After` a failed slot's 503s carry (and how long the jobs it cannot run
/// stay back in the queue): nothing changes until an operator acts, so clients are
/// told to come back much later, not at once.
const FAILED_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl Actor {
    pub(super) fn new(
        spec: Spec,
        deps: Deps,
        status: watch::Sender<WorkerStatus>,
        me: mpsc::UnboundedSender<Command>,
    ) -> Actor {
        let s = &spec.service;
        let policy: Policy = s.restart;
        let (mut life, _) = Lifecycle::new(policy, Instant::now());
        life.initial = spec.initial;
        life.startup_timeout = s.startup_timeout;
        let generation = spec.generations.load(std::sync::atomic::Ordering::Acquire);
        let in_flight = deps
            .metrics
            .in_flight
            .get_or_create(&Metrics::service(spec.service.name.as_str()))
            .clone();
        Actor {
            spec,
            deps,
            status,
            me,
            life,
            running: None,
            conn: None,
            inflight: None,
            batch: None,
            generation,
            seq: 0,
            served: 0,
            recycle_after: 0,
            recycle_asked: false,
            down: false,
            announced: false,
            crashed_at: None,
            last_exit: None,
            forks_with_threads: 0,
            last_fork: None,
            sdk: None,
            load_ms: None,
            next_probe: Instant::now(),
            next_rss_check: Instant::now(),
            last_progress: String::new(),
            ready_since: None,
            pending: VecDeque::new(),
            late_read_since: None,
            replies: Vec::new(),
            in_flight,
        }
    }

    pub(super) fn name(&self) -> String {
        format!("{}/{}", self.spec.service.name, self.spec.index)
    }

    pub(super) fn service(&self) -> &str {
        self.spec.service.name.as_str()
    }

    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        if let Some(d) = &self.deps.dispatcher {
            d.join(self.spec.wid);
        }
        self.execute(vec![Action::Spawn]).await;
        loop {
            while let Some(ev) = self.pending.pop_front() {
                let before = self.life.state.phase();
                let actions = self.life.on(ev, Instant::now());
                let after = &self.life.state;
                if before != after.phase() {
                    match after {
                        State::Failed { reason }
                        | State::Restarting { reason, .. }
                        | State::CrashLoop { reason, .. }
                        | State::Replacing { reason } => {
                            tracing::warn!(worker = %self.name(), "{before} -> {}: {reason}", after.name())
                        }
                        State::Busy { .. } => {}
                        _ if before == Phase::Busy => {}
                        _ => tracing::info!(worker = %self.name(), "{before} -> {}", after.name()),
                    }
                }
                self.execute(actions).await;
            }
            // The next request goes to the worker before the answers to earlier
            // ones go back: the worker is busy again while the HTTP side works.
            if let Some(job) = self.after_transition() {
                match self.serve(job).await {
                    Some(ev) => self.pending.push_back(ev),
                    // Refused (no such handler, too large): answer it now, and let
                    // other tasks run if a queue full of those keeps coming.
                    None => {
                        self.send_replies();
                        tokio::task::coop::consume_budget().await;
                    }
                }
                continue;
            }
            if !self.pending.is_empty() {
                continue;
            }
            self.send_replies();
            self.publish();
            self.tell_availability();
            if self.life.state == State::Stopped && self.running.is_none() {
                if let Some(d) = &self.deps.dispatcher {
                    d.leave(self.spec.wid);
                }
                // Requests the dispatcher handed us meanwhile go back to the queue.
                commands.close();
                while let Ok(cmd) = commands.try_recv() {
                    if let (Command::Serve(job), Some(d)) = (cmd, &self.deps.dispatcher) {
                        d.requeue(job);
                    }
                }
                return;
            }
            let timer = self.next_timer();
            let aborts = self.aborts();
            let event = tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(Command::Stop) | None => Some(Event::StopRequested),
                    Some(Command::Serve(job)) => self.serve(job).await,
                    Some(Command::Retire) => Some(Event::RetireRequested),
                },
                // SIGKILL after the grace period comes before frames: a worker that
                // keeps talking cannot hold off its own kill.
                _ = sleep_until(self.life.kill_at.unwrap_or_else(Instant::now).into()), if self.life.kill_at.is_some() => {
                    Some(Event::GraceOver)
                }
                status = wait(&mut self.running) => Some(self.collect_exit(status).await),
                // Before the timers: a reply that arrives with its deadline counts.
                // Not while a stream waits for its client (backpressure).
                frame = next_frame(&mut self.conn), if !self.stream_stalled() => {
                    let ev = self.on_frame(frame).await;
                    ev.map(|e| self.answer_violation(e))
                }
                permit = stream::room(&self.inflight), if self.stream_stalled() => {
                    self.stream_room(permit).await
                }
                _ = cancel::requested(aborts) => self.on_abort().await,
                _ = stream::client_gone(&self.inflight), if self.stream().is_some_and(|s| s.stalled.is_none() && s.cancelled_at.is_none()) => {
                    self.cancel_stream("its client disconnected").await;
                    self.stream_finished()
                }
                _ = sleep_until(timer.map_or_else(Instant::now, |t| t.0).into()), if timer.is_some() => {
                    let (_, which) = timer.expect("the branch needs a timer");
                    self.on_timer(which).await
                }
            };
            if let Some(ev) = event {
                self.pending.push_back(ev);
            }
        }
    }

    /// The earliest of the actor's timers, if any is set (on a tie, the first in
    /// `Timer`'s order). The lifecycle's SIGKILL clock is not among them: it has a
    /// branch of its own, ahead of frames.
    pub(super) fn next_timer(&self) -> Option<(Instant, Timer)> {
        let s = &self.spec.service;
        let starting = matches!(self.life.state, State::Starting { .. });
        let running = self.running.is_some();
        let probing = s.kind == Kind::Process
            && running
            && (starting || matches!(self.life.state, State::Ready { .. }));
        let request = self
            .inflight
            .as_ref()
            .map(|f| f.deadline)
            .or(self.batch.as_ref().map(|b| b.kill_at))
            .map(|at| (at, Timer::Request));
        let life = self
            .life
            .clocks()
            .filter(|(_, clock)| *clock != Clock::Kill)
            .map(|(at, clock)| (at, Timer::Life(clock)));
        let watch_memory = s.max_rss > 0 || s.gpu.max_memory > 0;
        let rss = (watch_memory && running && !self.recycle_asked).then_some(self.next_rss_check);
        let own = [
            (probing.then_some(self.next_probe), Timer::Probe),
            (rss, Timer::Rss),
        ]
        .into_iter()
        .filter_map(|(at, which)| at.map(|at| (at, which)));
        request
            .into_iter()
            .chain(self.stream_clock())
            .chain(life)
            .chain(own)
            .min_by_key(|(at, _)| *at)
    }

    /// Whether a deadline that is due should wait for bytes the worker already
    /// sent: the kernel holds some that this actor has not read (the daemon was
    /// paused — SIGSTOP, a VM freeze, a laptop's sleep, heavy swapping — while the
    /// worker answered). The decision is the kernel's, not the event loop's, which
    /// may not have heard yet; a worker that keeps sending gets at most
    /// `LATE_READ_GRACE` more.
    fn answer_unread(&mut self) -> bool {
        use std::os::fd::AsFd;
        let unread = self
            .conn
            .as_ref()
            .is_some_and(|c| paddock_sys::readable_now(c.frames.get_ref().as_ref().as_fd()));
        if !unread {
            self.late_read_since = None;
            return false;
        }
        let now = Instant::now();
        let since = *self.late_read_since.get_or_insert(now);
        now < since + LATE_READ_GRACE
    }

    /// A timer is due.
    pub(super) async fn on_timer(&mut self, which: Timer) -> Option<Event> {
        if matches!(which, Timer::Request | Timer::StreamIdle) && self.answer_unread() {
            // Let the runtime poll its I/O driver: the frame branch, ahead of the
            // timers, then reads what is there, and the deadline is decided again.
            tokio::task::yield_now().await;
            return None;
        }
        match which {
            Timer::Life(Clock::Kill) => Some(Event::GraceOver),
            Timer::Request => {
                if self.batch.is_some() {
                    self.batch_timed_out().await;
                } else {
                    self.deadline_passed();
                }
                Some(Event::DeadlinePassed)
            }
            Timer::Life(Clock::SocketClosed) => {
                Some(self.answer_violation(Event::ProtocolViolation(
                    "the worker closed its protocol socket but kept running".into(),
                )))
            }
            Timer::Life(Clock::Startup) => Some(Event::StartupTimedOut {
                after: self.spec.service.startup_timeout,
                last: self.last_progress.clone(),
            }),
            Timer::Life(Clock::Backoff) => Some(Event::BackoffElapsed),
            Timer::Probe => {
                let starting = matches!(self.life.state, State::Starting { .. });
                self.probe(starting).await
            }
            Timer::StreamIdle => {
                let idle = self.spec.service.stream_idle_timeout;
                self.stream_fail(
                    format!(
                        "the worker sent nothing for {}ms (stream_idle_timeout); it was killed and is being replaced",
                        idle.as_millis()
                    ),
                    serde_json::json!({"kind": "stream_idle_timeout"}),
                );
                self.deadline_passed();
                Some(Event::DeadlinePassed)
            }
            Timer::StreamWrite => {
                self.cancel_stream("its client took nothing for stream_write_timeout")
                    .await;
                self.stream_finished()
            }
            Timer::CancelGrace => {
                tracing::warn!(worker = %self.name(), "the worker did not end a cancelled stream within cancel_grace: killing it");
                self.deadline_passed();
                Some(Event::DeadlinePassed)
            }
            Timer::Rss => {
                self.next_rss_check = Instant::now() + Duration::from_secs(1);
                self.check_rss();
                None
            }
        }
    }

    /// Whenever the worker is ready and idle: the next queued request for it, or
    /// else this worker goes on the dispatcher's idle list.
    pub(super) fn after_transition(&mut self) -> Option<Job> {
        let ready = matches!(self.life.state, State::Ready { .. })
            && self.inflight.is_none()
            && self.batch.is_none();
        if !ready {
            return None;
        }
        // Without a connection it could serve nothing: never offer it.
        if !self.announced
            && self.conn.is_some()
            && let Some(d) = &self.deps.dispatcher
        {
            let job = d.next_for(self.spec.wid, &self.me);
            self.announced = job.is_none();
            return job;
        }
        None
    }

    pub(super) fn progress(&mut self, message: String) {
        if !self.life.initial || message == self.last_progress {
            return;
        }
        self.last_progress = message.clone();
        let _ = self.deps.startup.send(StartupEvent::Progress {
            service: self.spec.service.name.to_string(),
            worker: self.spec.index,
            message,
        });
    }

    pub(super) async fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Spawn => {
                    self.sdk = None; // the new process says its own in HELLO
                    self.load_ms = None;
                    self.spawn().await
                }
                Action::Terminate => match &self.running {
                    Some(r) => r.proc.signal_group(paddock_sys::signal::SIGTERM),
                    None => self.pending.push_back(not_running()),
                },
                Action::Kill => match &self.running {
                    Some(r) => r.proc.signal_group(paddock_sys::signal::SIGKILL),
                    None => self.pending.push_back(not_running()),
                },
                Action::AnnounceReady => {
                    let _ = self.deps.startup.send(StartupEvent::Ready {
                        service: self.spec.service.name.to_string(),
                        worker: self.spec.index,
                    });
                }
                Action::FailStart { code, message } => {
                    let tail = self.deps.logs.tail(self.spec.index, TAIL_LINES).await;
                    let _ = self.deps.startup.send(StartupEvent::Failed {
                        service: self.spec.service.name.to_string(),
                        worker: self.spec.index,
                        code,
                        message,
                        tail,
                    });
                }
                Action::Wait(d) => {
                    self.life.jitter = crate::jitter::unit();
                    tracing::info!(worker = %self.name(), "restarting in {:.1}s", d.as_secs_f64());
                }
            }
        }
        if matches!(self.life.state, State::Ready { .. } | State::Busy { .. })
            && self.ready_since.is_none()
        {
            self.ready_since = Some(crate::timefmt::now());
            if let Some(t) = self.crashed_at.take() {
                let svc = Metrics::service(self.service());
                self.deps
                    .metrics
                    .crash_to_ready
                    .get_or_create(&svc)
                    .observe(t.elapsed().as_secs_f64());
            }
        }
    }

    /// Tells the dispatcher when this worker starts or stops crash-looping: a
    /// worker that is trying again after a crash loop stays "down" until it is
    /// proven ready.
    pub(super) fn tell_availability(&mut self) {
        let Some(d) = &self.deps.dispatcher else {
            return;
        };
        match &self.life.state {
            State::CrashLoop { until, reason } => {
                d.set_down(self.spec.wid, Some((reason.clone(), *until)));
                self.down = true;
            }
            // Failed at runtime (an SDK the daemon cannot speak to): down until a
            // reload replaces the slot; clients are told why.
            State::Failed { reason } if !self.down && !self.spec.on_demand => {
                d.set_down(
                    self.spec.wid,
                    Some((reason.clone(), Instant::now() + FAILED_RETRY_AFTER)),
                );
                self.down = true;
            }
            State::Failed { .. } | State::Starting { .. } => {}
            _ if self.down => {
                d.set_down(self.spec.wid, None);
                self.down = false;
            }
            _ => {}
        }
    }

    pub(super) fn publish(&self) {
        let reason = match &self.life.state {
            State::Failed { reason }
            | State::Restarting { reason, .. }
            | State::Replacing { reason } => Some(reason.clone()),
            State::CrashLoop { until, reason } => Some(format!(
                "{reason}; next try in {:.1}s",
                until
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
            )),
            State::Backoff { until } => Some(format!(
                "restarting in {:.1}s; last exit: {}",
                until
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64(),
                self.last_exit
                    .as_ref()
                    .map(|c| c.description.as_str())
                    .unwrap_or("unknown")
            )),
            _ => None,
        };
        // A worker finishing its last request while stopping was serving: its
        // READY SINCE stays until it is gone.
        let ready_since = match self.life.state {
            State::Ready { .. } | State::Busy { .. } | State::Stopping => self.ready_since.clone(),
            _ => None,
        };
        // Field by field, so that the hot path (ready <-> busy) allocates nothing;
        // env_set and index never change after the actor starts.
        let state = self.life.state.phase();
        let pid = self.running.as_ref().map(|r| r.pid);
        self.status.send_if_modified(|cur| {
            let mut changed = false;
            if cur.state != state {
                cur.state = state;
                changed = true;
            }
            if cur.generation != self.generation
                || cur.pid != pid
                || cur.restarts != self.life.restarts
            {
                cur.generation = self.generation;
                cur.pid = pid;
                cur.restarts = self.life.restarts;
                changed = true;
            }
            if cur.ready_since != ready_since {
                cur.ready_since = ready_since;
                changed = true;
            }
            if cur.last_exit.as_ref().map(|c| &c.at) != self.last_exit.as_ref().map(|c| &c.at) {
                cur.last_exit = self.last_exit.clone();
                changed = true;
            }
            if cur.reason != reason {
                cur.reason = reason;
                changed = true;
            }
            if cur.sdk != self.sdk {
                cur.sdk = self.sdk.clone();
                changed = true;
            }
            if cur.load_ms != self.load_ms {
                cur.load_ms = self.load_ms;
                changed = true;
            }
            if cur.forks_with_threads != self.forks_with_threads {
                cur.forks_with_threads = self.forks_with_threads;
                cur.last_fork = self.last_fork.clone();
                changed = true;
            }
            changed
        });
    }
}
