//! The worker's process: spawning it (through the [`Launcher`]: its own process
//! group, its protocol socket or listening socket as descriptor 3), probing
//! a process service, and collecting its exit (what is left of its group killed and
//! waited for, its last frames read, the cause described).

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use paddock_protocol::Frame;

use super::Actor;
use super::conn::{Answer, connect};
use super::launch::Proc;
use super::request::recycle_after;
use crate::config::Kind;
use crate::daemon::lifecycle::{Event, State};
use crate::daemon::metrics::CauseLabels;
use crate::daemon::ports;
use crate::daemon::ports::Ownership;
use crate::status::ExitCause;

pub(super) struct Running {
    pub(super) proc: Box<dyn Proc>,
    pub(super) pid: i32,
    pub(super) readers: Vec<tokio::task::JoinHandle<()>>,
    pub(super) spawned: Instant,
}

impl Actor {
    /// Runs the readiness proof (while starting) or the liveness probe (when ready).
    pub(super) async fn probe(&mut self, starting: bool) -> Option<Event> {
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
            match crate::daemon::probe::run(
                health,
                self.spec.port,
                s.health_timeout,
                &self.deps.spawner,
            )
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
            let r = crate::daemon::probe::run(
                health,
                self.spec.port,
                s.health_timeout,
                &self.deps.spawner,
            )
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
                detail: r.err().map(|e| e.0).unwrap_or_default(),
            })
        }
    }

    pub(super) async fn spawn(&mut self) {
        let s = self.spec.service.clone();
        let mut cmd = match &self.spec.listener {
            // Through `paddock __exec-listen`, which sets LISTEN_PID to the
            // program's own pid (see cli/exec_listen.rs).
            Some(_) => {
                // Found by PATH when the running binary's own path is unknown.
                let exe = std::env::current_exe()
                    .unwrap_or_else(|_| std::path::PathBuf::from(env!("CARGO_PKG_NAME")));
                let mut c = std::process::Command::new(exe);
                c.arg(crate::exec_listen::ARG)
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
        let launched = {
            use std::os::fd::AsFd;
            let fd = match (&pair, &self.spec.listener) {
                (Some((_, theirs)), _) => Some(theirs.as_fd()),
                (None, Some(l)) => Some(l.as_fd()),
                (None, None) => None,
            };
            self.deps.launcher.launch(cmd, fd).await
        };
        match launched {
            Ok(mut proc) => {
                let pid = proc.pid();
                self.generation = next_generation;
                self.seq = 0;
                self.served = 0;
                self.recycle_asked = false;
                self.announced = false;
                self.recycle_after = recycle_after(s.max_requests, crate::jitter::unit());
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
                let readers = proc
                    .take_output()
                    .into_iter()
                    .map(|(stream, out)| self.deps.logs.capture(self.spec.index, stream, out))
                    .collect();
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
                    proc,
                    pid,
                    readers,
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
    pub(super) async fn collect_exit(&mut self, status: std::io::Result<ExitStatus>) -> Event {
        let mut r = self
            .running
            .take()
            .expect("wait() only completes with a process");
        // Frames the worker sent just before it exited still count: a SETUP_FAILED
        // with its traceback, or the reply to its request.
        // Anything the worker started dies with it — at once, before any await, so
        // that the group id cannot have been reused by then.
        r.proc.signal_group(paddock_sys::signal::SIGKILL);
        let mut setup_failed = None;
        if let Some(mut c) = self.conn.take() {
            let drain = Duration::from_millis(500);
            while let Ok(Ok(frame)) = tokio::time::timeout(drain, c.frames.next()).await {
                match Answer::of(frame, c.version) {
                    Ok((id, answer)) if self.inflight.as_ref().is_some_and(|f| f.id == id) => {
                        self.take_answer(answer);
                    }
                    Ok(_) => {}
                    Err(Frame::SetupFailed { text }) => setup_failed = Some(text),
                    Err(Frame::BatchReply { results }) if self.answers_batch(&results).is_ok() => {
                        self.take_batch_answers(results);
                    }
                    Err(_) => {}
                }
            }
        }
        // A reply that came before the exit goes out now, not after the respawn.
        self.send_replies();
        let requested = matches!(
            self.life.state,
            State::Stopping | State::Restarting { .. } | State::Replacing { .. }
        );
        // "Stopped" and "failed" promise that nothing of this process is left: wait
        // until the SIGKILLed group has really exited, not just been signalled.
        let left = r.proc.reap_group(Duration::from_secs(5)).await;
        if !left.is_empty() {
            tracing::warn!(worker = %self.name(), pgid = r.pid, "process(es) {left:?} of the group survive SIGKILL (stuck in the kernel?)");
        }
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
        if cause.signal.as_deref() == Some("SIGKILL") && !requested && r.proc.oom_killed() {
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
            State::Restarting { cause, .. } => Some(cause.label()),
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
        if let Some(b) = self.take_batch() {
            self.batch_crashed(b, r.pid, &cause).await;
        }
        self.last_exit = Some(cause.clone());
        match setup_failed {
            Some(text) if matches!(self.life.state, State::Starting { .. }) => {
                Event::SetupFailed(text)
            }
            _ => Event::Exited(cause),
        }
    }
}

/// The event for a kill of a process that never started (its spawn failed).
pub(super) fn not_running() -> Event {
    Event::Exited(ExitCause {
        exit_code: None,
        signal: None,
        requested: true,
        oom_killed: false,
        at: crate::timefmt::now(),
        description: "was not running".into(),
    })
}

pub(super) async fn wait(running: &mut Option<Running>) -> std::io::Result<ExitStatus> {
    match running {
        Some(r) => r.proc.wait().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

pub(super) fn exit_cause(st: ExitStatus, requested: bool) -> ExitCause {
    use std::os::unix::process::ExitStatusExt;
    ExitCause {
        exit_code: st.code(),
        signal: st.signal().map(paddock_sys::signal::name),
        requested,
        oom_killed: false,
        at: crate::timefmt::now(),
        description: crate::status::describe_exit(st),
    }
}
