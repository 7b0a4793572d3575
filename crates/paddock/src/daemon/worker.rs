//! The worker actor: one task owns one worker slot of a service — its process, its
//! protocol socket, its timers, its probes, the request it is serving — and drives
//! the [`Lifecycle`] state machine.
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

use std::collections::{BTreeMap, VecDeque};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_protocol::Frame;
use paddock_protocol::io::{FrameReader, ReadError};
use serde_json::json;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::sleep_until;

use super::dispatch::{Dispatcher, Job, Outcome};
use super::groups::Groups;
use super::lifecycle::{Action, Event, Lifecycle, Policy, State};
use super::logsink::{LogSink, Stream};
use super::metrics::{CauseLabels, Metrics};
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
    /// Stop now (SIGTERM, then SIGKILL after stop_timeout).
    Stop,
    /// Serve this request.
    Serve(Job),
    /// Take no more requests; stop once the current one is answered.
    Retire,
}

/// What the actor asks of its service's coordinator.
#[derive(Debug)]
pub enum Ask {
    /// Replace me (a replacement first, then retire me): max_requests or max_rss.
    Recycle { wid: u64, reason: String },
}

/// What the actor needs from the daemon.
#[derive(Clone)]
pub struct Deps {
    pub spawner: Spawner,
    pub groups: Groups,
    pub logs: LogSink,
    pub startup: mpsc::UnboundedSender<StartupEvent>,
    pub metrics: Arc<Metrics>,
    pub dispatcher: Option<Dispatcher>,
    pub coordinator: mpsc::UnboundedSender<Ask>,
}

/// Everything fixed about one worker slot.
pub struct Spec {
    pub service: Arc<Service>,
    pub index: u32,
    /// Unique among the service's actors (a slot's replacement gets a new one).
    pub wid: u64,
    pub port: Option<u16>,
    pub argv: Vec<String>,
    /// `listen_fd`: the listening socket every generation inherits as descriptor 3.
    pub listener: Option<Arc<std::net::TcpListener>>,
    /// The working directory (`cwd` with `{worker}` expanded).
    pub cwd: std::path::PathBuf,
    pub env_set: BTreeMap<String, String>,
    /// How long to wait before the first spawn (`start_stagger`).
    pub start_delay: Duration,
    /// Part of the initial start: a failure fails `paddock start`.
    pub initial: bool,
    /// The slot's generation counter (the last generation issued), shared by the
    /// slot's successive actors: every spawn takes the next number, so no two
    /// processes of a slot ever share one (docs/protocol.md), even when a failed
    /// replacement and the worker it was to replace spawn side by side.
    pub generations: Arc<std::sync::atomic::AtomicU64>,
}

/// The supervisor's handle to a worker actor.
pub struct Handle {
    pub wid: u64,
    pub status: watch::Receiver<WorkerStatus>,
    pub commands: mpsc::UnboundedSender<Command>,
}

pub fn start(spec: Spec, deps: Deps) -> Handle {
    let (status_tx, status) = watch::channel(WorkerStatus {
        index: spec.index,
        generation: spec.generations.load(std::sync::atomic::Ordering::Acquire),
        state: "starting".into(),
        pid: None,
        restarts: 0,
        ready_since: None,
        last_exit: None,
        reason: None,
        env_set: super::env::computed(&spec.service, &spec.env_set),
        env_from_config: spec.service.env.keys().cloned().collect(),
    });
    let (commands, mut rx) = mpsc::unbounded_channel();
    let wid = spec.wid;
    let me = commands.clone();
    tokio::spawn(async move {
        // start_stagger: this worker's first spawn waits its turn; a stop meanwhile
        // ends it without a process ever existing.
        if !spec.start_delay.is_zero() {
            status_tx.send_modify(|s| {
                s.reason = Some(format!(
                    "waiting {:.1}s (start_stagger)",
                    spec.start_delay.as_secs_f64()
                ))
            });
            tokio::select! {
                _ = tokio::time::sleep(spec.start_delay) => {}
                _ = stop_asked(&mut rx) => {
                    status_tx.send_modify(|s| {
                        s.state = "stopped".into();
                        s.reason = None;
                    });
                    return;
                }
            }
            status_tx.send_modify(|s| s.reason = None);
        }
        Actor::new(spec, deps, status_tx, me).run(rx).await
    });
    Handle {
        wid,
        status,
        commands,
    }
}

struct Conn {
    frames: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    hello: bool,
    /// The protocol version the worker said in HELLO.
    version: u16,
    methods: Vec<String>,
    idempotent: Vec<String>,
}

struct Running {
    child: Child,
    pid: i32,
    readers: Vec<tokio::task::JoinHandle<()>>,
    oom_kills_at_spawn: Option<u64>,
    spawned: Instant,
}

struct InFlight {
    id: u64,
    job: Job,
    deadline: Instant,
    started: Instant,
    idempotent: bool,
}

/// The actor's timers. It sleeps only until the earliest one that is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// SIGKILL for a group that was sent SIGTERM (stop_timeout passed).
    Kill,
    /// The request being served reached request_timeout.
    Request,
    /// The worker closed its socket a second ago and is still running.
    SocketClosed,
    /// startup_timeout passed while starting.
    Startup,
    /// The restart backoff is over.
    Backoff,
    /// A process service's readiness or liveness probe is due.
    Probe,
    /// Time to compare the worker's memory with max_rss.
    Rss,
}

struct Actor {
    spec: Spec,
    deps: Deps,
    status: watch::Sender<WorkerStatus>,
    me: mpsc::UnboundedSender<Command>,
    life: Lifecycle,
    running: Option<Running>,
    conn: Option<Conn>,
    inflight: Option<InFlight>,
    generation: u64,
    seq: u32,
    served: u64,
    recycle_after: u64,
    recycle_asked: bool,
    retiring: bool,
    /// Whether the dispatcher was told this worker is crash-looping.
    down: bool,
    announced: bool,
    crashed_at: Option<Instant>,
    last_exit: Option<ExitCause>,
    /// When to send SIGKILL to a group that was sent SIGTERM.
    kill_at: Option<Instant>,
    /// When the worker closed its protocol socket (its exit should follow at once).
    eof_at: Option<Instant>,
    next_probe: Instant,
    /// When to compare the worker's memory with max_rss next (a fixed instant, so
    /// that a stream of requests cannot keep postponing it).
    next_rss_check: Instant,
    backoff_until: Option<Instant>,
    last_progress: String,
    ready_since: Option<String>,
    pending: VecDeque<Event>,
    /// Answers not sent yet (see `finish`).
    replies: Vec<(oneshot::Sender<Outcome>, Outcome)>,
    /// This service's in-flight gauge.
    in_flight: prometheus_client::metrics::gauge::Gauge,
}

impl Actor {
    fn new(
        spec: Spec,
        deps: Deps,
        status: watch::Sender<WorkerStatus>,
        me: mpsc::UnboundedSender<Command>,
    ) -> Actor {
        let s = &spec.service;
        let policy = Policy {
            health_failures: s.health_failures,
            backoff_initial: s.backoff_initial,
            backoff_max: s.backoff_max,
            crash_loop_failures: s.crash_loop_failures,
            crash_loop_window: s.crash_loop_window,
            stable_after: s.stable_after,
        };
        let (mut life, _) = Lifecycle::new(policy, Instant::now());
        life.initial = spec.initial;
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
            generation,
            seq: 0,
            served: 0,
            recycle_after: 0,
            recycle_asked: false,
            retiring: false,
            down: false,
            announced: false,
            crashed_at: None,
            last_exit: None,
            kill_at: None,
            eof_at: None,
            next_probe: Instant::now(),
            next_rss_check: Instant::now(),
            backoff_until: None,
            last_progress: String::new(),
            ready_since: None,
            pending: VecDeque::new(),
            replies: Vec::new(),
            in_flight,
        }
    }

    fn name(&self) -> String {
        format!("{}/{}", self.spec.service.name, self.spec.index)
    }

    fn service(&self) -> &str {
        self.spec.service.name.as_str()
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        if let Some(d) = &self.deps.dispatcher {
            d.join(self.spec.wid);
        }
        self.execute(vec![Action::Spawn]).await;
        loop {
            while let Some(ev) = self.pending.pop_front() {
                let before = self.life.state.name();
                let actions = self.life.on(ev, Instant::now());
                let after = &self.life.state;
                if before != after.name() {
                    match after {
                        State::Failed { reason }
                        | State::Restarting { reason }
                        | State::CrashLoop { reason, .. }
                        | State::Replacing { reason } => {
                            tracing::warn!(worker = %self.name(), "{before} -> {}: {reason}", after.name())
                        }
                        State::Busy { .. } => {}
                        _ if before == "busy" => {}
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
            let event = tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(Command::Stop) | None => Some(Event::StopRequested),
                    Some(Command::Serve(job)) => self.serve(job).await,
                    Some(Command::Retire) => {
                        self.retiring = true;
                        if self.inflight.is_none() { Some(Event::StopRequested) } else { None }
                    }
                },
                // SIGKILL after the grace period comes before frames: a worker that
                // keeps talking cannot hold off its own kill.
                _ = sleep_until(self.kill_at.unwrap_or_else(Instant::now).into()), if self.kill_at.is_some() => {
                    self.on_timer(Timer::Kill).await
                }
                status = wait(&mut self.running) => {
                    let ev = self.collect_exit(status).await;
                    // A retiring worker is never respawned, whatever ended it.
                    Some(if self.retiring { Event::StopRequested } else { ev })
                }
                // Before the timers: a reply that arrives with its deadline counts.
                frame = next_frame(&mut self.conn) => {
                    let ev = self.on_frame(frame);
                    ev.map(|e| self.answer_violation(e))
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

    /// The earliest of the actor's timers but `Kill` (which has a branch of its
    /// own, ahead of frames), if any is set (on a tie, the first in `Timer`'s order).
    fn next_timer(&self) -> Option<(Instant, Timer)> {
        let s = &self.spec.service;
        let starting = matches!(self.life.state, State::Starting { .. });
        let running = self.running.is_some();
        let probing = s.kind == Kind::Process
            && running
            && (starting || matches!(self.life.state, State::Ready { .. }));
        let startup = match self.life.state {
            State::Starting { since } => Some(since + s.startup_timeout),
            _ => None,
        };
        let eof = self
            .eof_at
            .filter(|_| running)
            .map(|t| t + Duration::from_secs(1));
        let rss = (s.max_rss > 0 && running && !self.recycle_asked).then_some(self.next_rss_check);
        [
            (self.inflight.as_ref().map(|f| f.deadline), Timer::Request),
            (eof, Timer::SocketClosed),
            (startup, Timer::Startup),
            (self.backoff_until, Timer::Backoff),
            (probing.then_some(self.next_probe), Timer::Probe),
            (rss, Timer::Rss),
        ]
        .into_iter()
        .filter_map(|(at, which)| at.map(|at| (at, which)))
        .min_by_key(|(at, _)| *at)
    }

    /// A timer is due.
    async fn on_timer(&mut self, which: Timer) -> Option<Event> {
        match which {
            Timer::Kill => {
                self.kill_at = None;
                if let Some(r) = &self.running {
                    paddock_sys::signal::kill_group(r.pid, paddock_sys::signal::SIGKILL);
                }
                None
            }
            Timer::Request => {
                self.deadline_passed();
                Some(Event::DeadlinePassed)
            }
            Timer::SocketClosed => {
                self.eof_at = None;
                Some(self.answer_violation(Event::ProtocolViolation(
                    "the worker closed its protocol socket but kept running".into(),
                )))
            }
            Timer::Startup => Some(Event::StartupTimedOut {
                after: self.spec.service.startup_timeout,
                last: self.last_progress.clone(),
            }),
            Timer::Backoff => {
                self.backoff_until = None;
                Some(Event::BackoffElapsed)
            }
            Timer::Probe => {
                let starting = matches!(self.life.state, State::Starting { .. });
                self.probe(starting).await
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
    fn after_transition(&mut self) -> Option<Job> {
        let ready = matches!(self.life.state, State::Ready { .. }) && self.inflight.is_none();
        if !ready {
            return None;
        }
        if self.retiring {
            self.pending.push_back(Event::StopRequested);
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

    /// Sends the answers of finished requests to their HTTP clients.
    fn send_replies(&mut self) {
        send_all(&mut self.replies);
    }

    /// Sends a request to the worker, or hands it back when this worker cannot take it.
    async fn serve(&mut self, job: Job) -> Option<Event> {
        self.announced = false;
        let dispatcher = self.deps.dispatcher.clone()?;
        let ready = matches!(self.life.state, State::Ready { .. })
            && self.inflight.is_none()
            && !self.retiring;
        let Some(conn) = self.conn.as_mut().filter(|_| ready) else {
            dispatcher.requeue(job);
            return None;
        };
        if !conn.methods.contains(&job.method) {
            let message = format!(
                "service {} has no handler {:?} (it has: {})",
                self.spec.service.name,
                job.method,
                conn.methods.join(", ")
            );
            let _ = job.reply.send(Outcome::NotFound { message });
            return None;
        }
        self.seq = self.seq.wrapping_add(1);
        let id = paddock_protocol::request_id(self.generation as u32, self.seq);
        let timeout = self.spec.service.request_timeout;
        let idempotent = conn.idempotent.contains(&job.method);
        let bytes = match paddock_protocol::encode_request(
            id,
            timeout.as_millis().min(u32::MAX as u128) as u32,
            &job.method,
            &job.content_type,
            &job.body,
        ) {
            Ok(b) if b.len() <= self.spec.service.max_frame + 4 => b,
            Ok(b) => {
                let message = format!(
                    "the request is {} bytes, over this service's max_frame ({})",
                    b.len(),
                    self.spec.service.max_frame
                );
                let _ = job.reply.send(Outcome::BadRequest { message, code: 413 });
                return None;
            }
            Err(e) => {
                let _ = job.reply.send(Outcome::BadRequest {
                    message: e.to_string(),
                    code: 400,
                });
                return None;
            }
        };
        // In flight (with its deadline) before the first byte is written: a worker
        // that stops reading cannot stall this actor past the deadline.
        let now = Instant::now();
        self.in_flight.inc();
        self.inflight = Some(InFlight {
            id,
            job,
            deadline: now + timeout,
            started: now,
            idempotent,
        });
        // Usually the whole frame fits in the socket at once; if it does not, the
        // answers held back for this write go out before waiting for the worker.
        // (WouldBlock or an error: write_all below waits, or meets the error again.)
        let written = conn.writer.try_write(&bytes).unwrap_or(0);
        if written == bytes.len() {
            return Some(Event::Dispatched);
        }
        send_all(&mut self.replies);
        use tokio::io::AsyncWriteExt;
        match tokio::time::timeout(timeout, conn.writer.write_all(&bytes[written..])).await {
            Ok(Ok(())) => Some(Event::Dispatched),
            Ok(Err(e)) => {
                // The worker is going away; its exit follows. The request waits for another.
                tracing::warn!(worker = %self.name(), "could not send a request: {e}");
                self.conn = None;
                if let Some(f) = self.take_inflight() {
                    dispatcher.requeue(f.job);
                }
                None
            }
            Err(_) => {
                self.deadline_passed();
                self.pending.push_back(Event::Dispatched);
                self.pending.push_back(Event::DeadlinePassed);
                None
            }
        }
    }

    /// Takes the request being served, if any, out of the in-flight count.
    fn take_inflight(&mut self) -> Option<InFlight> {
        let f = self.inflight.take()?;
        self.in_flight.dec();
        Some(f)
    }

    /// Answers the request being served; the answer goes out with the next
    /// `send_replies` (after the worker got its next request, if there is one).
    /// A handler's unexpected exception: tagged with an error id that the client
    /// gets, while the message and traceback go to the service's log.
    fn handler_error(&self, message: String, traceback: String) -> Outcome {
        let error_id = format!("E-{:08x}", (super::jitter() * f64::from(u32::MAX)) as u32);
        let worker = self.spec.index;
        self.deps.logs.note_now(
            worker,
            format!("error {error_id}: {message}\n{}", traceback.trim_end()),
        );
        Outcome::HandlerError {
            message,
            traceback,
            worker,
            error_id,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(f) = self.take_inflight() {
            self.replies.push((f.job.reply, outcome));
        }
    }

    fn on_frame(&mut self, frame: Option<Result<Frame, ReadError>>) -> Option<Event> {
        let conn = self.conn.as_mut()?;
        let frame = match frame {
            None | Some(Err(ReadError::Closed)) => {
                // The worker closed its socket: its exit should follow; if it does not
                // within a second, it is killed (it can serve nothing any more).
                self.conn = None;
                self.eof_at = Some(Instant::now());
                return None;
            }
            // Nothing after a bad frame can be trusted (or even found): the
            // connection is dropped with the worker, which is killed for it.
            Some(Err(e)) => {
                self.conn = None;
                return Some(Event::ProtocolViolation(e.to_string()));
            }
            Some(Ok(f)) => f,
        };
        if !conn.hello {
            return match frame {
                Frame::Hello { version, pid, meta } => {
                    if !(paddock_protocol::MIN_VERSION..=paddock_protocol::VERSION)
                        .contains(&version)
                    {
                        return Some(Event::ProtocolViolation(format!(
                            "the worker speaks protocol version {version}; this daemon speaks {} to {}",
                            paddock_protocol::MIN_VERSION,
                            paddock_protocol::VERSION
                        )));
                    }
                    conn.hello = true;
                    conn.version = version;
                    tracing::debug!(worker = %self.name(), pid, "HELLO {meta}");
                    self.progress("loading (HELLO received)".into());
                    None
                }
                other => Some(Event::ProtocolViolation(format!(
                    "frame 0x{:02x} before HELLO",
                    other.kind()
                ))),
            };
        }
        match frame {
            Frame::Ready { json } => {
                if !matches!(self.life.state, State::Starting { .. }) {
                    return Some(Event::ProtocolViolation("READY when not starting".into()));
                }
                let v: serde_json::Value = match serde_json::from_str(&json) {
                    Ok(v) => v,
                    Err(e) => {
                        return Some(Event::ProtocolViolation(format!("READY is not JSON: {e}")));
                    }
                };
                let list = |k: &str| -> Vec<String> {
                    v[k].as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                conn.methods = list("methods");
                conn.idempotent = list("idempotent");
                if let Some(d) = &self.deps.dispatcher {
                    d.set_methods(&conn.methods);
                }
                if let Some(r) = &self.running {
                    let secs = r.spawned.elapsed().as_secs_f64();
                    self.deps
                        .metrics
                        .load_seconds
                        .get_or_create(&Metrics::service(self.service()))
                        .observe(secs);
                }
                Some(Event::ProvenReady)
            }
            Frame::SetupFailed { text } => Some(Event::SetupFailed(text)),
            Frame::Reply {
                id,
                content_type,
                body,
            } => match &self.inflight {
                Some(f) if f.id == id => {
                    self.finish(Outcome::Ok { content_type, body });
                    self.after_request();
                    Some(Event::Finished)
                }
                _ => Some(self.wrong_id(id)),
            },
            Frame::Error {
                id,
                message,
                traceback,
            } => match &self.inflight {
                Some(f) if f.id == id => {
                    let outcome = self.handler_error(message, traceback);
                    self.finish(outcome);
                    self.after_request();
                    Some(Event::Finished)
                }
                _ => Some(self.wrong_id(id)),
            },
            Frame::BadRequest { id, message } if conn.version >= 2 => match &self.inflight {
                Some(f) if f.id == id => {
                    self.finish(Outcome::BadRequest { message, code: 400 });
                    self.after_request();
                    Some(Event::Finished)
                }
                _ => Some(self.wrong_id(id)),
            },
            Frame::StreamStart { .. } | Frame::Chunk { .. } | Frame::StreamEnd { .. } => {
                Some(Event::ProtocolViolation(
                    "streamed replies are not supported by this daemon yet".into(),
                ))
            }
            other => Some(Event::ProtocolViolation(format!(
                "unexpected frame 0x{:02x} from a worker",
                other.kind()
            ))),
        }
    }

    /// The worker broke the protocol: the request it held is answered 502 now.
    fn answer_violation(&mut self, ev: Event) -> Event {
        let Event::ProtocolViolation(why) = &ev else {
            return ev;
        };
        let why = why.clone();
        if let Some(f) = &self.inflight {
            let cause = json!({
                "worker": self.spec.index,
                "pid": self.running.as_ref().map(|r| r.pid),
                "generation": self.generation,
                "protocol_violation": why,
                "description": format!("broke the worker protocol ({why}) and was killed"),
                "queued_ms": f.started.duration_since(f.job.received).as_millis() as u64,
            });
            self.finish(Outcome::Crashed { cause });
        }
        ev
    }

    fn wrong_id(&self, id: u64) -> Event {
        let outstanding = self
            .inflight
            .as_ref()
            .map(|f| format!("{:#x}", f.id))
            .unwrap_or_else(|| "none".into());
        Event::ProtocolViolation(format!(
            "reply to request {id:#x} (generation {}), but the outstanding request is {outstanding}",
            paddock_protocol::generation_of(id)
        ))
    }

    /// After a request was answered: count it, and ask for a recycle when due.
    fn after_request(&mut self) {
        self.served += 1;
        if self.recycle_after > 0 && self.served >= self.recycle_after && !self.recycle_asked {
            self.ask_recycle(format!("served {} requests (max_requests)", self.served));
        }
    }

    fn ask_recycle(&mut self, reason: String) {
        self.recycle_asked = true;
        tracing::info!(worker = %self.name(), "asking for a recycle: {reason}");
        let _ = self.deps.coordinator.send(Ask::Recycle {
            wid: self.spec.wid,
            reason,
        });
    }

    fn check_rss(&mut self) {
        let Some(r) = &self.running else { return };
        let rss: u64 = paddock_sys::procfs::tree_of_group(r.pid)
            .iter()
            .filter_map(|&p| paddock_sys::procfs::rss_bytes(p))
            .sum();
        if rss > self.spec.service.max_rss {
            self.ask_recycle(format!(
                "resident memory {} MiB is over max_rss ({} MiB)",
                rss >> 20,
                self.spec.service.max_rss >> 20
            ));
        }
    }

    fn deadline_passed(&mut self) {
        let Some(r) = &self.running else { return };
        let pid = r.pid;
        let timeout = self.spec.service.request_timeout;
        let cause = match &self.inflight {
            Some(f) => json!({
                "worker": self.spec.index,
                "pid": pid,
                "generation": self.generation,
                "request_timeout_ms": timeout.as_millis() as u64,
                "queued_ms": f.started.duration_since(f.job.received).as_millis() as u64,
                "ran_ms": f.started.elapsed().as_millis() as u64,
            }),
            None => return,
        };
        let svc = Metrics::service(self.service());
        self.deps.metrics.deadline_kills.get_or_create(&svc).inc();
        self.finish(Outcome::DeadlineKilled { cause });
        tracing::warn!(worker = %self.name(), pid, "request passed its {}ms deadline: killing the worker", timeout.as_millis());
    }

    /// Runs the readiness proof (while starting) or the liveness probe (when ready).
    async fn probe(&mut self, starting: bool) -> Option<Event> {
        let s = self.spec.service.clone();
        let pid = self.running.as_ref()?.pid;
        if starting {
            self.next_probe = Instant::now() + Duration::from_millis(100);
            // listen_fd: paddock's own socket listens from the start; only the
            // health probe (http or exec, required) proves the program answers.
            if let Some(port) = self.spec.port.filter(|_| self.spec.listener.is_none()) {
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

    async fn spawn(&mut self) {
        let s = self.spec.service.clone();
        let mut cmd = match &self.spec.listener {
            // Through `paddock __exec-listen`, which sets LISTEN_PID to the
            // program's own pid (see cli/exec_listen.rs).
            Some(_) => {
                let exe = std::env::current_exe()
                    .unwrap_or_else(|_| std::path::PathBuf::from("/proc/self/exe"));
                let mut c = std::process::Command::new(exe);
                c.arg(crate::cli::exec_listen::ARG)
                    .args(&self.spec.argv)
                    .env("LISTEN_FDS", "1")
                    .env("LISTEN_FDNAMES", self.spec.service.name.as_str());
                c
            }
            None => {
                let mut c = std::process::Command::new(&self.spec.argv[0]);
                c.args(&self.spec.argv[1..]);
                c
            }
        };
        cmd.current_dir(&self.spec.cwd)
            .envs(&self.spec.env_set)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(port) = self.spec.port
            && self.spec.listener.is_none()
            && let Some(who) = ports::holder(port)
        {
            self.pending.push_back(Event::PortStolen(who));
            return;
        }
        let next_generation = self
            .spec
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        // Worker services: a socketpair, one end inherited by the worker as fd 3.
        let pair = if s.kind == Kind::Worker {
            match std::os::unix::net::UnixStream::pair() {
                Ok(p) => Some(p),
                Err(e) => {
                    self.pending
                        .push_back(Event::SpawnFailed(format!("socketpair: {e}")));
                    return;
                }
            }
        } else {
            None
        };
        if pair.is_some() {
            cmd.env("PADDOCK_FD", paddock_protocol::WORKER_FD.to_string())
                .env("PADDOCK_MAX_FRAME", s.max_frame.to_string())
                .env("PADDOCK_GENERATION", next_generation.to_string());
        }
        let inherit = {
            use std::os::fd::AsRawFd;
            match (&pair, &self.spec.listener) {
                (Some((_, theirs)), _) => Some((theirs.as_raw_fd(), paddock_protocol::WORKER_FD)),
                (None, Some(l)) => Some((l.as_raw_fd(), paddock_protocol::WORKER_FD)),
                (None, None) => None,
            }
        };
        let oom_kills_at_spawn = paddock_sys::procfs::cgroup_oom_kills();
        match self.deps.spawner.spawn_with_fd(cmd, inherit).await {
            Ok(mut child) => {
                let pid = child.id().map(|p| p as i32).unwrap_or(0);
                self.deps.groups.add(pid);
                self.generation = next_generation;
                self.seq = 0;
                self.served = 0;
                self.recycle_asked = false;
                self.announced = false;
                self.recycle_after = recycle_after(s.max_requests, super::jitter());
                self.ready_since = None;
                self.next_probe = Instant::now() + Duration::from_millis(50);
                if let Some((ours, theirs)) = pair {
                    drop(theirs);
                    match connect(ours, s.max_frame) {
                        Ok(c) => self.conn = Some(c),
                        Err(e) => self
                            .pending
                            .push_back(Event::ProtocolViolation(format!("socket: {e}"))),
                    }
                }
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
                    spawned: Instant::now(),
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
    /// group, answer the request it held, and describe the cause.
    async fn collect_exit(&mut self, status: std::io::Result<ExitStatus>) -> Event {
        let mut r = self
            .running
            .take()
            .expect("wait() only completes with a process");
        // Frames the worker sent just before it exited still count: a SETUP_FAILED
        // with its traceback, or the reply to its request.
        // Anything the worker started dies with it — at once, before any await, so
        // that the group id cannot have been reused by then.
        paddock_sys::signal::kill_group(r.pid, paddock_sys::signal::SIGKILL);
        self.eof_at = None;
        let mut setup_failed = None;
        if let Some(mut c) = self.conn.take() {
            let drain = Duration::from_millis(500);
            while let Ok(Ok(frame)) = tokio::time::timeout(drain, c.frames.next()).await {
                match frame {
                    Frame::SetupFailed { text } => setup_failed = Some(text),
                    Frame::Reply {
                        id,
                        content_type,
                        body,
                    } if self.inflight.as_ref().is_some_and(|f| f.id == id) => {
                        self.finish(Outcome::Ok { content_type, body });
                    }
                    Frame::Error {
                        id,
                        message,
                        traceback,
                    } if self.inflight.as_ref().is_some_and(|f| f.id == id) => {
                        let outcome = self.handler_error(message, traceback);
                        self.finish(outcome);
                    }
                    Frame::BadRequest { id, message }
                        if self.inflight.as_ref().is_some_and(|f| f.id == id) =>
                    {
                        self.finish(Outcome::BadRequest { message, code: 400 });
                    }
                    _ => {}
                }
            }
        }
        // A reply that came before the exit goes out now, not after the respawn.
        self.send_replies();
        let requested = matches!(
            self.life.state,
            State::Stopping | State::Restarting { .. } | State::Replacing { .. }
        );
        self.kill_at = None;
        // "Stopped" and "failed" promise that nothing of this process is left: wait
        // until the SIGKILLed group has really exited, not just been signalled.
        let left = super::groups::wait_gone(r.pid, Duration::from_secs(5)).await;
        if !left.is_empty() {
            tracing::warn!(worker = %self.name(), pgid = r.pid, "process(es) {left:?} of the group survive SIGKILL (stuck in the kernel?)");
        }
        self.deps.groups.remove(r.pid);
        // Let the readers drain what the process wrote before it died; a grandchild
        // that kept the pipe open cannot hold us for more than a moment.
        let readers = join_all(std::mem::take(&mut r.readers));
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
        if cause.signal.as_deref() == Some("SIGKILL")
            && !requested
            && let (Some(a), Some(b)) = (
                r.oom_kills_at_spawn,
                paddock_sys::procfs::cgroup_oom_kills(),
            )
            && b > a
        {
            cause.oom_killed = true;
            cause.description = "was killed by the kernel's OOM killer (out of memory)".into();
        }
        tracing::info!(worker = %self.name(), pid = r.pid, "{}", cause.description);
        self.deps
            .logs
            .note(
                self.spec.index,
                format!("pid {} {}", r.pid, cause.description),
            )
            .await;
        let restart_cause = match &self.life.state {
            State::Stopping => None,
            State::Replacing { .. } => Some("deadline"),
            State::Restarting { reason } if reason.starts_with("protocol") => Some("protocol"),
            State::Restarting { reason } if reason.starts_with("health") => Some("health"),
            _ => Some("crash"),
        };
        if let Some(c) = restart_cause {
            self.deps
                .metrics
                .restarts
                .get_or_create(&CauseLabels {
                    service: self.service().to_string(),
                    cause: c.to_string(),
                })
                .inc();
        }
        if !requested {
            self.crashed_at = Some(Instant::now());
        }
        if let Some(f) = self.take_inflight() {
            self.resolve_crashed(f, r.pid, &cause).await;
        }
        self.last_exit = Some(cause.clone());
        match setup_failed {
            Some(text) if matches!(self.life.state, State::Starting { .. }) => {
                Event::SetupFailed(text)
            }
            _ => Event::Exited(cause),
        }
    }

    /// The request a dead worker held: retried elsewhere when allowed, else answered.
    async fn resolve_crashed(&mut self, f: InFlight, pid: i32, cause: &ExitCause) {
        let mut job = f.job;
        if matches!(self.life.state, State::Stopping) {
            let _ = job.reply.send(Outcome::ShuttingDown);
            return;
        }
        job.crashes += 1;
        let s = &self.spec.service;
        let tail = self.deps.logs.tail(self.spec.index, TAIL_LINES).await;
        let detail = json!({
            "worker": self.spec.index,
            "pid": pid,
            "generation": self.generation,
            "signal": cause.signal,
            "exit_code": cause.exit_code,
            "oom_killed": cause.oom_killed,
            "description": cause.description,
            "workers_killed_by_this_request": job.crashes,
            "log_tail": tail,
        });
        if job.crashes >= s.poison_limit && s.poison_limit > 1 {
            let _ = job.reply.send(Outcome::Poison { cause: detail });
        } else if f.idempotent && job.crashes <= s.retry_on_crash && job.crashes < s.poison_limit {
            tracing::info!(worker = %self.name(), "retrying {:?} on another worker after a crash", job.method);
            if let Some(d) = &self.deps.dispatcher {
                d.requeue(job);
            }
        } else {
            let _ = job.reply.send(Outcome::Crashed { cause: detail });
        }
    }

    /// Tells the dispatcher when this worker starts or stops crash-looping: a
    /// worker that is trying again after a crash loop stays "down" until it is
    /// proven ready.
    fn tell_availability(&mut self) {
        let Some(d) = &self.deps.dispatcher else {
            return;
        };
        match &self.life.state {
            State::CrashLoop { until, reason } => {
                d.set_down(self.spec.wid, Some((reason.clone(), *until)));
                self.down = true;
            }
            State::Starting { .. } => {}
            _ if self.down => {
                d.set_down(self.spec.wid, None);
                self.down = false;
            }
            _ => {}
        }
    }

    fn publish(&self) {
        let reason = match &self.life.state {
            State::Failed { reason }
            | State::Restarting { reason }
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
        let state = self.life.state.name();
        let pid = self.running.as_ref().map(|r| r.pid);
        self.status.send_if_modified(|cur| {
            let mut changed = false;
            if cur.state != state {
                cur.state = state.to_string();
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
            changed
        });
    }
}

/// Completes when a stop (or retire) is asked of an actor that has not started.
async fn stop_asked(rx: &mut mpsc::UnboundedReceiver<Command>) {
    loop {
        match rx.recv().await {
            Some(Command::Stop | Command::Retire) | None => return,
            Some(_) => {}
        }
    }
}

/// Sends held answers to their HTTP clients (a client that left is no error).
fn send_all(replies: &mut Vec<(oneshot::Sender<Outcome>, Outcome)>) {
    for (tx, outcome) in replies.drain(..) {
        let _ = tx.send(outcome);
    }
}

/// The request count after which a worker is recycled: `max` less up to 10 %.
fn recycle_after(max: u64, jitter: f64) -> u64 {
    if max == 0 {
        return 0;
    }
    (max - (max as f64 * 0.1 * jitter) as u64).max(1)
}

/// Wraps our end of the socketpair. The actor reads frames itself, in its
/// `select!` ([`FrameReader::next`] is cancel-safe): no task and no channel between
/// a worker's reply and the actor that hands the worker its next request.
fn connect(ours: std::os::unix::net::UnixStream, max_frame: usize) -> std::io::Result<Conn> {
    ours.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(ours)?;
    let (read, writer) = stream.into_split();
    Ok(Conn {
        frames: FrameReader::new(read, max_frame),
        writer,
        hello: false,
        version: 0,
        methods: vec![],
        idempotent: vec![],
    })
}

async fn next_frame(conn: &mut Option<Conn>) -> Option<Result<Frame, ReadError>> {
    match conn {
        Some(c) => Some(c.frames.next().await),
        None => std::future::pending().await,
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

async fn join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
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

#[cfg(test)]
mod tests {
    #[test]
    fn recycle_after_has_up_to_ten_percent_jitter() {
        assert_eq!(super::recycle_after(0, 0.5), 0);
        assert_eq!(super::recycle_after(1000, 0.0), 1000);
        assert_eq!(super::recycle_after(1000, 0.999), 901);
        assert_eq!(super::recycle_after(1, 0.9), 1);
    }
}
