//! The worker actor: one task owns one worker slot of a service — its process, its
//! timers, its probes — and drives the [`Lifecycle`] state machine.
//!
//! Invariants:
//! - only this task signals its process group, so a kill can never hit a newer
//!   generation by mistake;
//! - after any exit the whole process group is SIGKILLed and forgotten by the
//!   registry before anything else is spawned: a crashed worker's children never
//!   linger;
//! - the status other tasks read is published through a `watch` channel after every
//!   transition; nobody else holds the state.

use std::collections::{BTreeMap, VecDeque};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;

use super::groups::Groups;
use super::lifecycle::{Action, Event, Lifecycle, Policy, State};
use super::logsink::{LogSink, Stream};
use super::ports::{self, Ownership};
use super::spawner::Spawner;
use crate::config::{Kind, Service};
use crate::status::{ExitCause, WorkerStatus};

/// Lines of a worker's output shown with a failure.
pub const TAIL_LINES: usize = 20;

/// What a worker tells the supervisor during the initial start.
#[derive(Debug)]
pub enum StartupEvent {
    Progress {
        service: String,
        worker: u32,
        message: String,
    },
    Ready {
        service: String,
        worker: u32,
    },
    Failed {
        service: String,
        worker: u32,
        code: i32,
        message: String,
        tail: Vec<String>,
    },
}

/// Orders for a worker's actor.
#[derive(Debug)]
pub enum Command {
    Stop,
}

/// What the actor needs from the daemon.
#[derive(Clone)]
pub struct Deps {
    pub spawner: Spawner,
    pub groups: Groups,
    pub logs: LogSink,
    pub startup: mpsc::UnboundedSender<StartupEvent>,
}

/// Everything fixed about one worker slot.
pub struct Spec {
    pub service: Arc<Service>,
    pub index: u32,
    pub port: Option<u16>,
    pub argv: Vec<String>,
    pub env_set: BTreeMap<String, String>,
}

/// The supervisor's handle to a worker actor.
pub struct Handle {
    pub status: watch::Receiver<WorkerStatus>,
    pub commands: mpsc::UnboundedSender<Command>,
}

pub fn start(spec: Spec, deps: Deps) -> Handle {
    let (status_tx, status) = watch::channel(WorkerStatus {
        index: spec.index,
        generation: 0,
        state: "starting".into(),
        pid: None,
        restarts: 0,
        ready_since: None,
        last_exit: None,
        reason: None,
        env_set: spec.env_set.clone(),
    });
    let (commands, rx) = mpsc::unbounded_channel();
    tokio::spawn(Actor::new(spec, deps, status_tx).run(rx));
    Handle { status, commands }
}

struct Running {
    child: Child,
    pid: i32,
    readers: Vec<tokio::task::JoinHandle<()>>,
    oom_kills_at_spawn: Option<u64>,
}

struct Actor {
    spec: Spec,
    deps: Deps,
    status: watch::Sender<WorkerStatus>,
    life: Lifecycle,
    running: Option<Running>,
    generation: u64,
    last_exit: Option<ExitCause>,
    /// When to send SIGKILL to a group that was sent SIGTERM.
    kill_at: Option<Instant>,
    next_probe: Instant,
    backoff_until: Option<Instant>,
    last_progress: String,
    ready_since: Option<String>,
    pending: VecDeque<Event>,
}

impl Actor {
    fn new(spec: Spec, deps: Deps, status: watch::Sender<WorkerStatus>) -> Actor {
        let s = &spec.service;
        let policy = Policy {
            health_failures: s.health_failures,
            backoff_initial: s.backoff_initial,
            backoff_max: s.backoff_max,
            crash_loop_failures: s.crash_loop_failures,
            crash_loop_window: s.crash_loop_window,
        };
        let (life, _) = Lifecycle::new(policy, Instant::now());
        Actor {
            spec,
            deps,
            status,
            life,
            running: None,
            generation: 0,
            last_exit: None,
            kill_at: None,
            next_probe: Instant::now(),
            backoff_until: None,
            last_progress: String::new(),
            ready_since: None,
            pending: VecDeque::new(),
        }
    }

    fn name(&self) -> String {
        format!("{}/{}", self.spec.service.name, self.spec.index)
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        self.execute(vec![Action::Spawn]).await;
        loop {
            while let Some(ev) = self.pending.pop_front() {
                let before = self.life.state.name();
                let actions = self.life.on(ev, Instant::now());
                let after = &self.life.state;
                if before != after.name() {
                    match after {
                        State::Failed { reason } | State::Restarting { reason } => {
                            tracing::warn!(worker = %self.name(), "{before} -> {}: {reason}", after.name())
                        }
                        _ => tracing::info!(worker = %self.name(), "{before} -> {}", after.name()),
                    }
                }
                self.execute(actions).await;
            }
            self.publish();
            if self.life.state == State::Stopped && self.running.is_none() {
                return;
            }
            let starting = matches!(self.life.state, State::Starting { .. });
            let probing = starting || matches!(self.life.state, State::Ready { .. });
            let startup_deadline = match self.life.state {
                State::Starting { since } => Some(since + self.spec.service.startup_timeout),
                _ => None,
            };
            let far = Instant::now() + Duration::from_secs(86400);
            let event = tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(Command::Stop) | None => Some(Event::StopRequested),
                },
                status = wait(&mut self.running) => Some(self.collect_exit(status).await),
                _ = sleep_until(self.kill_at.unwrap_or(far).into()), if self.kill_at.is_some() => {
                    self.kill_at = None;
                    if let Some(r) = &self.running {
                        paddock_sys::signal::kill_group(r.pid, paddock_sys::signal::SIGKILL);
                    }
                    None
                }
                _ = sleep_until(startup_deadline.unwrap_or(far).into()), if startup_deadline.is_some() => {
                    Some(Event::StartupTimedOut)
                }
                _ = sleep_until(self.backoff_until.unwrap_or(far).into()), if self.backoff_until.is_some() => {
                    self.backoff_until = None;
                    Some(Event::BackoffElapsed)
                }
                _ = sleep_until(self.next_probe.into()), if probing && self.running.is_some() => {
                    self.probe(starting).await
                }
            };
            if let Some(ev) = event {
                self.pending.push_back(ev);
            }
        }
    }

    /// Runs the readiness proof (while starting) or the liveness probe (when ready).
    async fn probe(&mut self, starting: bool) -> Option<Event> {
        let s = self.spec.service.clone();
        let pid = self.running.as_ref()?.pid;
        if starting {
            self.next_probe = Instant::now() + Duration::from_millis(100);
            if s.kind == Kind::Worker {
                // Worker-protocol services are proven by their READY frame.
                return None;
            }
            if let Some(port) = self.spec.port {
                match ports::ownership(port, pid) {
                    Ownership::NotListening => {
                        self.progress(format!("waiting for port {port} to be bound"));
                        return None;
                    }
                    Ownership::Foreign(who) => return Some(Event::PortStolen(who)),
                    Ownership::Ours | Ownership::Unknown => {}
                }
            }
            let Some(health) = &s.health else {
                return Some(Event::ProvenReady);
            };
            match super::probe::run(health, self.spec.port, s.health_timeout, &self.deps.spawner)
                .await
            {
                Ok(()) => Some(Event::ProvenReady),
                Err(why) => {
                    self.progress(format!("health probe: {why}"));
                    None
                }
            }
        } else {
            self.next_probe = Instant::now() + s.health_interval;
            let health = s.health.as_ref()?;
            let r = super::probe::run(health, self.spec.port, s.health_timeout, &self.deps.spawner)
                .await;
            if let Err(why) = &r {
                tracing::warn!(worker = %self.name(), "health probe failed: {why}");
                self.deps
                    .logs
                    .note(self.spec.index, format!("health probe failed: {why}"))
                    .await;
            }
            Some(Event::Probe {
                ok: r.is_ok(),
                detail: r.err().unwrap_or_default(),
            })
        }
    }

    fn progress(&mut self, message: String) {
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

    async fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Spawn => self.spawn().await,
                Action::Terminate => match &self.running {
                    Some(r) => {
                        paddock_sys::signal::kill_group(r.pid, paddock_sys::signal::SIGTERM);
                        self.kill_at = Some(Instant::now() + self.spec.service.stop_timeout);
                    }
                    None => self.pending.push_back(not_running()),
                },
                Action::Kill => match &self.running {
                    Some(r) => {
                        paddock_sys::signal::kill_group(r.pid, paddock_sys::signal::SIGKILL);
                    }
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
                    self.backoff_until = Some(Instant::now() + d);
                    self.life.jitter = super::jitter();
                    tracing::info!(worker = %self.name(), "restarting in {:.1}s", d.as_secs_f64());
                }
            }
        }
        if matches!(self.life.state, State::Ready { .. }) && self.ready_since.is_none() {
            self.ready_since = Some(crate::timefmt::now());
        }
    }

    async fn spawn(&mut self) {
        let s = self.spec.service.clone();
        let mut cmd = std::process::Command::new(&self.spec.argv[0]);
        cmd.args(&self.spec.argv[1..])
            .current_dir(&s.cwd)
            .envs(&self.spec.env_set)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(port) = self.spec.port
            && let Some(who) = ports::holder(port)
        {
            self.pending.push_back(Event::PortStolen(who));
            return;
        }
        let oom_kills_at_spawn = paddock_sys::procfs::cgroup_oom_kills();
        match self.deps.spawner.spawn(cmd).await {
            Ok(mut child) => {
                let pid = child.id().map(|p| p as i32).unwrap_or(0);
                self.deps.groups.add(pid);
                self.generation += 1;
                self.ready_since = None;
                self.next_probe = Instant::now() + Duration::from_millis(50);
                let mut readers = vec![];
                if let Some(out) = child.stdout.take() {
                    readers.push(self.deps.logs.capture(self.spec.index, Stream::Out, out));
                }
                if let Some(err) = child.stderr.take() {
                    readers.push(self.deps.logs.capture(self.spec.index, Stream::Err, err));
                }
                tracing::info!(worker = %self.name(), pid, generation = self.generation, "spawned {:?}", self.spec.argv);
                self.deps
                    .logs
                    .note(
                        self.spec.index,
                        format!("spawned pid {pid} (generation {})", self.generation),
                    )
                    .await;
                self.progress(format!("spawned pid {pid}"));
                self.running = Some(Running {
                    child,
                    pid,
                    readers,
                    oom_kills_at_spawn,
                });
            }
            Err(e) => {
                let why = format!("{:?}: {e}", self.spec.argv[0]);
                tracing::error!(worker = %self.name(), "could not spawn {why}");
                self.deps
                    .logs
                    .note(self.spec.index, format!("could not start {why}"))
                    .await;
                self.pending.push_back(Event::SpawnFailed(why));
            }
        }
    }

    /// After the process ended: gather its last output, kill what is left of its
    /// group, and describe the cause.
    async fn collect_exit(&mut self, status: std::io::Result<ExitStatus>) -> Event {
        let r = self
            .running
            .take()
            .expect("wait() only completes with a process");
        let requested = matches!(self.life.state, State::Stopping | State::Restarting { .. });
        self.kill_at = None;
        // Anything the worker started dies with it.
        paddock_sys::signal::kill_group(r.pid, paddock_sys::signal::SIGKILL);
        self.deps.groups.remove(r.pid);
        // Let the readers drain what the process wrote before it died; a grandchild
        // that kept the pipe open cannot hold us for more than a moment.
        let readers = futures_join(r.readers);
        let _ = tokio::time::timeout(Duration::from_millis(500), readers).await;
        let mut cause = match status {
            Ok(st) => exit_cause(st, requested),
            Err(e) => ExitCause {
                exit_code: None,
                signal: None,
                requested,
                oom_killed: false,
                at: crate::timefmt::now(),
                description: format!("could not be waited for: {e}"),
            },
        };
        if cause.signal.as_deref() == Some("SIGKILL") && !requested {
            let now = paddock_sys::procfs::cgroup_oom_kills();
            if let (Some(a), Some(b)) = (r.oom_kills_at_spawn, now)
                && b > a
            {
                cause.oom_killed = true;
                cause.description = "was killed by the kernel's OOM killer (out of memory)".into();
            }
        }
        tracing::info!(worker = %self.name(), pid = r.pid, "{}", cause.description);
        self.deps
            .logs
            .note(
                self.spec.index,
                format!("pid {} {}", r.pid, cause.description),
            )
            .await;
        self.last_exit = Some(cause.clone());
        Event::Exited(cause)
    }

    fn publish(&self) {
        let reason = match &self.life.state {
            State::Failed { reason } | State::Restarting { reason } => Some(reason.clone()),
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
        let ready_since = match self.life.state {
            State::Ready { .. } => self.ready_since.clone(),
            _ => None,
        };
        let next = WorkerStatus {
            index: self.spec.index,
            generation: self.generation,
            state: self.life.state.name().into(),
            pid: self.running.as_ref().map(|r| r.pid),
            restarts: self.life.restarts,
            ready_since,
            last_exit: self.last_exit.clone(),
            reason,
            env_set: self.spec.env_set.clone(),
        };
        self.status.send_if_modified(|cur| {
            if *cur != next {
                *cur = next;
                true
            } else {
                false
            }
        });
    }
}

/// The event for a kill of a process that never started (its spawn failed).
fn not_running() -> Event {
    Event::Exited(ExitCause {
        exit_code: None,
        signal: None,
        requested: true,
        oom_killed: false,
        at: crate::timefmt::now(),
        description: "was not running".into(),
    })
}

async fn wait(running: &mut Option<Running>) -> std::io::Result<ExitStatus> {
    match running {
        Some(r) => r.child.wait().await,
        None => std::future::pending().await,
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// "exited with status 1", "was killed by SIGSEGV".
pub fn describe_status(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by {}", paddock_sys::signal::name(s)),
        _ => "ended for an unknown reason".into(),
    }
}

fn exit_cause(st: ExitStatus, requested: bool) -> ExitCause {
    use std::os::unix::process::ExitStatusExt;
    ExitCause {
        exit_code: st.code(),
        signal: st.signal().map(paddock_sys::signal::name),
        requested,
        oom_killed: false,
        at: crate::timefmt::now(),
        description: describe_status(st),
    }
}
