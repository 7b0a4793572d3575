//! The lifecycle of one worker slot, as a table of states and events.
//!
//! Why: a supervisor's bugs hide in the corners — an exit during a stop, a probe that
//! fails while a restart is under way, a crash during start-up. Here every state and
//! every event meet in one function, [`Lifecycle::on`], that returns the actions for
//! the worker's actor to carry out. It does no I/O and reads no clock, so it is tested
//! with plain unit tests.
//!
//! Invariants:
//! - any exit paddock did not ask for is a failure, exit status 0 included;
//! - during the initial start, a failure fails the whole `start` (no retries hide it);
//! - after that, a worker that dies *while serving a request* is replaced at once:
//!   it had proven it can start, so the failure belongs to the request (poison
//!   limit, retries), not to the crash-loop count — a repeated bad input is no
//!   denial of service;
//! - failures to reach READY and deaths while idle are counted: the first restarts
//!   at once, the next ones after a backoff doubling from `backoff_initial`; the
//!   count is forgotten once the worker has been ready for `stable_after`;
//! - `crash_loop_failures` counted failures within `crash_loop_window` make the slot
//!   `CrashLoop`: it keeps retrying every `backoff_max` (as Kubernetes does) and
//!   says why; it is never down for good at runtime, save for one cause no retry can
//!   change: a worker whose SDK speaks a protocol version the daemon does not
//!   (`Incompatible`) fails its slot until a `reload`;
//! - a retiring slot (recycled, scaled down, reloaded away) finishes the request it
//!   holds, then stops; whatever ends its process, it is never respawned;
//! - every SIGTERM is followed by a SIGKILL `stop_timeout` later unless the process
//!   exited first (`kill_at`), and a worker that closed its protocol socket but
//!   still runs a second later is killed for it (`eof_at`).
//!
//! The slot's clocks live here with its state: the backoff's end (in `Backoff` and
//! `CrashLoop`), `kill_at` and `eof_at`. The actor only sleeps until the earliest of
//! [`Lifecycle::clocks`] and reports which one passed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::status::{ExitCause, Phase};

/// Where a worker slot is.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Spawned, not yet proven ready.
    Starting {
        since: Instant,
    },
    /// Proven ready; `probe_failures` liveness failures in a row so far.
    Ready {
        since: Instant,
        probe_failures: u32,
    },
    /// Serving one request (worker services).
    Busy {
        since: Instant,
    },
    /// Being killed on purpose (a deadline): replaced at once, not counted as a failure.
    Replacing {
        reason: String,
    },
    /// Being killed so that it can be restarted; `reason` is the failure.
    Restarting {
        reason: String,
        cause: RestartCause,
    },
    /// Waiting before the next spawn.
    Backoff {
        until: Instant,
    },
    /// Too many failures close together: the next spawn is at `until`
    /// (`backoff_max` after the last failure); `reason` says what keeps failing.
    CrashLoop {
        until: Instant,
        reason: String,
    },
    /// Being stopped on request.
    Stopping,
    Stopped,
    /// Down for good; `reason` says why.
    Failed {
        reason: String,
    },
}

impl State {
    pub fn name(&self) -> &'static str {
        self.phase().as_str()
    }

    /// The phase `status` shows for this state.
    pub fn phase(&self) -> Phase {
        match self {
            State::Starting { .. } => Phase::Starting,
            State::Ready { .. } => Phase::Ready,
            State::Busy { .. } => Phase::Busy,
            State::Replacing { .. } => Phase::Replacing,
            State::Restarting { .. } => Phase::Restarting,
            State::Backoff { .. } => Phase::Backoff,
            State::CrashLoop { .. } => Phase::CrashLooping,
            State::Stopping => Phase::Stopping,
            State::Stopped => Phase::Stopped,
            State::Failed { .. } => Phase::Failed,
        }
    }

    /// Whether a process is (or may still be) running in this state.
    pub fn has_process(&self) -> bool {
        matches!(
            self,
            State::Starting { .. }
                | State::Ready { .. }
                | State::Busy { .. }
                | State::Replacing { .. }
                | State::Restarting { .. }
                | State::Stopping
        )
    }
}

/// Why paddock kills a worker to restart it (the metrics' `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartCause {
    /// It failed: exited, timed out starting, lost its port, setup() raised.
    Crash,
    /// It broke the worker protocol.
    Protocol,
    /// Its health probe failed `health_failures` times in a row.
    Health,
}

impl RestartCause {
    pub fn label(self) -> &'static str {
        match self {
            RestartCause::Crash => "crash",
            RestartCause::Protocol => "protocol",
            RestartCause::Health => "health",
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// The readiness proof passed.
    ProvenReady,
    /// A liveness probe ran.
    Probe {
        ok: bool,
        detail: String,
    },
    /// The process ended (its exit status or signal).
    Exited(ExitCause),
    /// The process could not be started at all.
    SpawnFailed(String),
    /// `startup_timeout` passed while starting.
    /// With what the worker last did, for the message.
    StartupTimedOut {
        after: Duration,
        last: String,
    },
    /// A foreign process holds the service's port.
    PortStolen(String),
    BackoffElapsed,
    StopRequested,
    /// Stop once the request in hand is answered (a recycle, a scale-down, a
    /// reload): never respawned.
    RetireRequested,
    /// `stop_timeout` passed since SIGTERM and the process still runs.
    GraceOver,
    /// The worker closed its protocol socket (its exit should follow at once).
    SocketClosed,
    /// A request was handed to the worker.
    Dispatched,
    /// The worker answered its request.
    Finished,
    /// The request's deadline passed: the worker is killed and replaced.
    DeadlinePassed,
    /// The job the worker runs was cancelled: killed and replaced, not counted.
    Cancelled,
    /// The worker broke the protocol (bad frame, wrong id): kill, counts as a failure.
    ProtocolViolation(String),
    /// The worker's setup raised (SETUP_FAILED with this traceback).
    SetupFailed(String),
    /// The worker speaks a protocol version this daemon does not (its SDK is too
    /// old or too new): no restart can fix it, so the slot fails for good.
    Incompatible(String),
}

/// What the actor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Spawn,
    /// SIGTERM the process group, SIGKILL after the grace period.
    Terminate,
    /// SIGKILL the process group now.
    Kill,
    /// Tell the starter (initial start only) that this worker is ready.
    AnnounceReady,
    /// Fail the initial start with this exit code and message.
    FailStart {
        code: i32,
        message: String,
    },
    /// Sleep until the backoff deadline, then BackoffElapsed.
    Wait(Duration),
}

/// How the slot meets failures and how long a stopping process is given: the
/// service's `restart` settings, one type for the config and the lifecycle.
pub type Policy = crate::config::Restart;

/// How long a worker that closed its protocol socket may go on running.
pub const SOCKET_CLOSED_GRACE: Duration = Duration::from_secs(1);

/// One of the slot's clocks (see [`Lifecycle::clocks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// SIGKILL for a process sent SIGTERM: [`Event::GraceOver`].
    Kill,
    /// The protocol socket closed a while ago and the process still runs.
    SocketClosed,
    /// `startup_timeout` passed: [`Event::StartupTimedOut`].
    Startup,
    /// The restart backoff is over: [`Event::BackoffElapsed`].
    Backoff,
}

/// One worker slot's state and history.
#[derive(Debug)]
pub struct Lifecycle {
    pub state: State,
    pub policy: Policy,
    /// True until the slot has been ready once (the initial start).
    pub initial: bool,
    pub restarts: u64,
    failures: VecDeque<Instant>,
    /// When the process now running was proven ready (None while not ready).
    ready_at: Option<Instant>,
    /// A number in [0, 1) for this slot's jitter, renewed by the actor.
    pub jitter: f64,
    /// Retiring: stop once the request in hand is answered; never respawn.
    pub retiring: bool,
    /// When to SIGKILL a process that was sent SIGTERM.
    pub kill_at: Option<Instant>,
    /// When a worker that closed its protocol socket is killed for still running.
    pub eof_at: Option<Instant>,
    /// The service's `startup_timeout`.
    pub startup_timeout: Duration,
}

impl Lifecycle {
    /// A slot whose first process is being spawned.
    pub fn new(policy: Policy, now: Instant) -> (Lifecycle, Vec<Action>) {
        let l = Lifecycle {
            state: State::Starting { since: now },
            policy,
            initial: true,
            restarts: 0,
            failures: VecDeque::new(),
            ready_at: None,
            jitter: 0.5,
            retiring: false,
            kill_at: None,
            eof_at: None,
            startup_timeout: Duration::MAX,
        };
        (l, vec![Action::Spawn])
    }

    /// The slot's clocks that are set, each with when it is due.
    pub fn clocks(&self) -> impl Iterator<Item = (Instant, Clock)> {
        let startup = match self.state {
            State::Starting { since } => since.checked_add(self.startup_timeout),
            _ => None,
        };
        let backoff = match self.state {
            State::Backoff { until } | State::CrashLoop { until, .. } => Some(until),
            _ => None,
        };
        [
            (self.kill_at, Clock::Kill),
            (self.eof_at, Clock::SocketClosed),
            (startup, Clock::Startup),
            (backoff, Clock::Backoff),
        ]
        .into_iter()
        .filter_map(|(at, which)| at.map(|at| (at, which)))
    }

    /// The delay before restart number `n` (1-based): doubling from
    /// `backoff_initial`, capped at `backoff_max`, with ±20 % jitter.
    pub fn backoff(&self, n: u32) -> Duration {
        self.policy.backoff(n, 0.8 + 0.4 * self.jitter)
    }

    /// The one transition function.
    pub fn on(&mut self, event: Event, now: Instant) -> Vec<Action> {
        use Action::*;
        use State::*;
        match &event {
            Event::Exited(_) | Event::SpawnFailed(_) => {
                self.kill_at = None;
                self.eof_at = None;
            }
            Event::ProtocolViolation(_) | Event::Incompatible(_) => self.eof_at = None,
            Event::GraceOver => self.kill_at = None,
            _ => {}
        }
        let state = std::mem::replace(&mut self.state, Stopped);
        let (next, actions) = match (state, event) {
            // The grace period after SIGTERM is over: SIGKILL, whatever the state.
            (s, Event::GraceOver) => (s, vec![Kill]),
            (s, Event::SocketClosed) => {
                if s.has_process() {
                    self.eof_at = Some(now + SOCKET_CLOSED_GRACE);
                }
                (s, vec![])
            }
            // A retiring worker busy with a request finishes it first.
            (Busy { since }, Event::RetireRequested) => {
                self.retiring = true;
                (Busy { since }, vec![])
            }
            (Busy { .. }, Event::Finished) if self.retiring => (Stopping, vec![Terminate]),
            // A stop wins over everything.
            (s, Event::StopRequested | Event::RetireRequested) if s.has_process() => {
                (Stopping, vec![Terminate])
            }
            (_, Event::StopRequested | Event::RetireRequested) => (Stopped, vec![]),
            (Stopping, Event::Exited(_)) => (Stopped, vec![]),
            (Stopping, _) => (Stopping, vec![]),
            // Whatever ends a retiring worker, it is not respawned.
            (_, Event::Exited(_) | Event::SpawnFailed(_)) if self.retiring => (Stopped, vec![]),

            (Starting { .. }, Event::ProvenReady) => {
                let first = self.initial;
                self.initial = false;
                self.ready_at = Some(now);
                (
                    Ready {
                        since: now,
                        probe_failures: 0,
                    },
                    if first { vec![AnnounceReady] } else { vec![] },
                )
            }
            (Starting { .. }, Event::StartupTimedOut { after, last }) => self.kill_for(
                format!(
                    "not ready within its startup_timeout ({}); the last thing it did: {}",
                    crate::timefmt::config_duration(after),
                    if last.is_empty() {
                        "nothing reported"
                    } else {
                        &last
                    }
                ),
                None,
                crate::exit::TIMED_OUT,
                RestartCause::Crash,
            ),
            (Starting { .. } | Ready { .. }, Event::PortStolen(who)) => self.kill_for(
                format!("its port is held by another program: {who}"),
                None,
                crate::exit::FAILURE,
                RestartCause::Crash,
            ),
            (Ready { .. }, Event::Dispatched) => (Busy { since: now }, vec![]),
            (Busy { .. }, Event::Finished) => (
                Ready {
                    since: now,
                    probe_failures: 0,
                },
                vec![],
            ),
            (Busy { .. }, Event::DeadlinePassed) => (
                Replacing {
                    reason: "request deadline passed".into(),
                },
                vec![Kill],
            ),
            (Busy { .. }, Event::Cancelled) => (
                Replacing {
                    reason: "its job was cancelled while it ran".into(),
                },
                vec![Kill],
            ),
            (Starting { .. } | Ready { .. } | Busy { .. }, Event::ProtocolViolation(why)) => self
                .kill_for(
                    format!("protocol violation: {why}"),
                    None,
                    crate::exit::FAILURE,
                    RestartCause::Protocol,
                ),
            // An SDK the daemon cannot speak to: during the initial start that fails
            // the start; later the slot is failed, not restarted in a loop (the
            // message says how to install a matching SDK; `reload` tries again).
            (Starting { .. }, Event::Incompatible(why)) => {
                let actions = if self.initial {
                    vec![
                        Kill,
                        FailStart {
                            code: crate::exit::FAILURE,
                            message: why.clone(),
                        },
                    ]
                } else {
                    vec![Kill]
                };
                (Failed { reason: why }, actions)
            }
            (Starting { .. }, Event::SetupFailed(text)) => {
                let (reason, message) = setup_failure(&text);
                self.kill_for(
                    reason,
                    Some(message),
                    crate::exit::FAILURE,
                    RestartCause::Crash,
                )
            }
            (Replacing { .. }, Event::Exited(_)) => {
                self.restarts += 1;
                (Starting { since: now }, vec![Spawn])
            }
            (
                Ready {
                    since,
                    probe_failures,
                },
                Event::Probe { ok, detail },
            ) => {
                if ok {
                    (
                        Ready {
                            since,
                            probe_failures: 0,
                        },
                        vec![],
                    )
                } else if probe_failures + 1 >= self.policy.health_failures {
                    (
                        Restarting {
                            reason: format!(
                                "health check failed {} times in a row (last: {detail})",
                                probe_failures + 1
                            ),
                            cause: RestartCause::Health,
                        },
                        vec![Terminate],
                    )
                } else {
                    (
                        Ready {
                            since,
                            probe_failures: probe_failures + 1,
                        },
                        vec![],
                    )
                }
            }
            (Starting { .. } | Ready { .. }, Event::Exited(cause)) => {
                self.failure(cause.description, now)
            }
            // A crash while serving is the request's doing: the worker had proven
            // it can start. Replace it at once; the request's crash count (poison
            // limit) deals with an input that kills every worker it meets.
            (Busy { .. }, Event::Exited(_)) => {
                self.ready_at = None;
                self.restarts += 1;
                (Starting { since: now }, vec![Spawn])
            }
            (
                Starting { .. } | Ready { .. } | Backoff { .. } | CrashLoop { .. },
                Event::SpawnFailed(why),
            ) => self.failure(format!("could not start: {why}"), now),
            (Restarting { reason, .. }, Event::Exited(_)) => self.failure(reason, now),
            (Backoff { .. } | CrashLoop { .. }, Event::BackoffElapsed) => {
                self.restarts += 1;
                (Starting { since: now }, vec![Spawn])
            }
            // Anything else changes nothing (a late probe result, a stale timer).
            (s, _) => (s, vec![]),
        };
        if actions.contains(&Terminate) {
            self.kill_at = Some(now + self.policy.stop_timeout);
        }
        self.state = next;
        actions
    }

    /// The process must be killed because of `reason`: during the initial start
    /// that fails the start (exit `code`, with `message` or the reason); later it is
    /// a restart (counted as a failure when the process has exited).
    fn kill_for(
        &mut self,
        reason: String,
        message: Option<String>,
        code: i32,
        cause: RestartCause,
    ) -> (State, Vec<Action>) {
        if self.initial {
            let message = message.unwrap_or_else(|| reason.clone());
            (
                State::Failed { reason },
                vec![Action::Kill, Action::FailStart { code, message }],
            )
        } else {
            (
                State::Restarting {
                    reason: message.unwrap_or(reason),
                    cause,
                },
                vec![Action::Kill],
            )
        }
    }

    /// A counted failure (not while serving a request): restart at once if it is
    /// the first in a while, after a growing backoff if it follows others closely,
    /// every `backoff_max` once they make a crash loop.
    fn failure(&mut self, reason: String, now: Instant) -> (State, Vec<Action>) {
        if self.initial {
            return (
                State::Failed {
                    reason: reason.clone(),
                },
                vec![Action::FailStart {
                    code: crate::exit::FAILURE,
                    message: reason,
                }],
            );
        }
        // A worker that had been ready for a stable period starts a new history.
        if self
            .ready_at
            .take()
            .is_some_and(|t| now.duration_since(t) >= self.policy.stable_after)
        {
            self.failures.clear();
        }
        self.failures.push_back(now);
        while let Some(&t) = self.failures.front() {
            if now.duration_since(t) > self.policy.crash_loop_window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        let n = self.failures.len() as u32;
        if n >= self.policy.crash_loop_failures {
            let reason = format!(
                "crash loop: {n} failures within {}s, retrying every {}s; last: {reason}",
                self.policy.crash_loop_window.as_secs(),
                self.policy.backoff_max.as_secs_f64()
            );
            let delay = self.policy.backoff_max;
            return (
                State::CrashLoop {
                    until: now + delay,
                    reason,
                },
                vec![Action::Wait(delay)],
            );
        }
        if n <= 1 {
            self.restarts += 1;
            return (State::Starting { since: now }, vec![Action::Spawn]);
        }
        let delay = self.backoff(n - 1);
        (
            State::Backoff { until: now + delay },
            vec![Action::Wait(delay)],
        )
    }
}

/// A SETUP_FAILED text as (reason, message): its first line says what is wrong, the
/// rest gives the details (docs/protocol.md). A bare traceback (older SDKs) is a
/// setup() that raised.
pub(crate) fn setup_failure(text: &str) -> (String, String) {
    let text = text.trim_end();
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() || first.starts_with("Traceback (most recent call last)") {
        let reason = "setup() raised an exception".to_string();
        return (reason.clone(), format!("{reason}:\n{text}"));
    }
    (first.trim_end_matches(':').to_string(), text.to_string())
}

#[cfg(test)]
mod tests;
