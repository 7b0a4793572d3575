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
//! - after that, failures restart the worker with exponential backoff, until
//!   `crash_loop_failures` failures fall within `crash_loop_window`: then the slot is
//!   `Failed` and stays down, with the reason kept for `status` and `/readyz`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::status::ExitCause;

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
    },
    /// Waiting before the next spawn.
    Backoff {
        until: Instant,
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
        match self {
            State::Starting { .. } => "starting",
            State::Ready { .. } => "ready",
            State::Busy { .. } => "busy",
            State::Replacing { .. } => "replacing",
            State::Restarting { .. } => "restarting",
            State::Backoff { .. } => "backoff",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed { .. } => "failed",
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
    StartupTimedOut,
    /// A foreign process holds the service's port.
    PortStolen(String),
    BackoffElapsed,
    StopRequested,
    /// A request was handed to the worker.
    Dispatched,
    /// The worker answered its request.
    Finished,
    /// The request's deadline passed: the worker is killed and replaced.
    DeadlinePassed,
    /// The worker broke the protocol (bad frame, wrong id): kill, counts as a failure.
    ProtocolViolation(String),
    /// The worker's setup raised (SETUP_FAILED with this traceback).
    SetupFailed(String),
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

/// The restart policy, from the service's config.
#[derive(Debug, Clone)]
pub struct Policy {
    pub health_failures: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub crash_loop_failures: u32,
    pub crash_loop_window: Duration,
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
    /// A number in [0, 1) for this slot's jitter, renewed by the actor.
    pub jitter: f64,
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
            jitter: 0.5,
        };
        (l, vec![Action::Spawn])
    }

    /// The delay before restart number `n` (1-based): doubling from
    /// `backoff_initial`, capped at `backoff_max`, with ±20 % jitter.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self.policy.backoff_initial.as_secs_f64()
            * 2f64.powi(n.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.policy.backoff_max.as_secs_f64());
        Duration::from_secs_f64(capped * (0.8 + 0.4 * self.jitter))
    }

    /// The one transition function.
    pub fn on(&mut self, event: Event, now: Instant) -> Vec<Action> {
        use Action::*;
        use State::*;
        let state = std::mem::replace(&mut self.state, Stopped);
        let (next, actions) = match (state, event) {
            // A stop wins over everything.
            (s, Event::StopRequested) if s.has_process() => (Stopping, vec![Terminate]),
            (_, Event::StopRequested) => (Stopped, vec![]),
            (Stopping, Event::Exited(_)) => (Stopped, vec![]),
            (Stopping, _) => (Stopping, vec![]),

            (Starting { .. }, Event::ProvenReady) => {
                let first = self.initial;
                self.initial = false;
                (
                    Ready {
                        since: now,
                        probe_failures: 0,
                    },
                    if first { vec![AnnounceReady] } else { vec![] },
                )
            }
            (Starting { .. }, Event::StartupTimedOut) => self.kill_for(
                "not ready within its startup_timeout".into(),
                None,
                crate::exit::TIMED_OUT,
            ),
            (Starting { .. } | Ready { .. }, Event::PortStolen(who)) => self.kill_for(
                format!("its port is held by another program: {who}"),
                None,
                crate::exit::FAILURE,
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
            (Starting { .. } | Ready { .. } | Busy { .. }, Event::ProtocolViolation(why)) => self
                .kill_for(
                    format!("protocol violation: {why}"),
                    None,
                    crate::exit::FAILURE,
                ),
            (Starting { .. }, Event::SetupFailed(traceback)) => self.kill_for(
                "setup() raised an exception".into(),
                Some(format!(
                    "setup() raised an exception:\n{}",
                    traceback.trim_end()
                )),
                crate::exit::FAILURE,
            ),
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
                self.failure(cause.description, now, false)
            }
            // A crash while serving is the request's doing as much as the worker's:
            // replace it at once (the crash still counts towards a crash loop).
            (Busy { .. }, Event::Exited(cause)) => self.failure(cause.description, now, true),
            (Starting { .. } | Ready { .. } | Backoff { .. }, Event::SpawnFailed(why)) => {
                self.failure(format!("could not start: {why}"), now, false)
            }
            (Restarting { reason }, Event::Exited(_)) => self.failure(reason, now, false),
            (Backoff { .. }, Event::BackoffElapsed) => {
                self.restarts += 1;
                (Starting { since: now }, vec![Spawn])
            }
            // Anything else changes nothing (a late probe result, a stale timer).
            (s, _) => (s, vec![]),
        };
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
                },
                vec![Action::Kill],
            )
        }
    }

    fn failure(&mut self, reason: String, now: Instant, immediate: bool) -> (State, Vec<Action>) {
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
                "crash loop: {n} failures within {}s; last: {reason}",
                self.policy.crash_loop_window.as_secs()
            );
            return (State::Failed { reason }, vec![]);
        }
        if immediate {
            self.restarts += 1;
            return (State::Starting { since: now }, vec![Action::Spawn]);
        }
        let delay = self.backoff(n);
        (
            State::Backoff { until: now + delay },
            vec![Action::Wait(delay)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            health_failures: 3,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            crash_loop_failures: 5,
            crash_loop_window: Duration::from_secs(60),
        }
    }

    fn exit(code: i32) -> Event {
        Event::Exited(ExitCause {
            exit_code: Some(code),
            signal: None,
            requested: false,
            oom_killed: false,
            at: String::new(),
            description: format!("exited with status {code}"),
        })
    }

    fn ready_slot(t: Instant) -> Lifecycle {
        let (mut l, a) = Lifecycle::new(policy(), t);
        assert_eq!(a, vec![Action::Spawn]);
        assert_eq!(l.on(Event::ProvenReady, t), vec![Action::AnnounceReady]);
        l
    }

    #[test]
    fn failure_during_initial_start_fails_the_start() {
        let t = Instant::now();
        let (mut l, _) = Lifecycle::new(policy(), t);
        let a = l.on(exit(1), t);
        assert!(matches!(a[0], Action::FailStart { code: 1, .. }));
        assert_eq!(l.state.name(), "failed");
    }

    #[test]
    fn startup_timeout_exits_5() {
        let t = Instant::now();
        let (mut l, _) = Lifecycle::new(policy(), t);
        let a = l.on(Event::StartupTimedOut, t);
        assert_eq!(a[0], Action::Kill);
        assert!(matches!(a[1], Action::FailStart { code: 5, .. }));
    }

    #[test]
    fn exit_zero_after_ready_is_a_failure_with_backoff() {
        let t = Instant::now();
        let mut l = ready_slot(t);
        let a = l.on(exit(0), t);
        assert!(matches!(a[0], Action::Wait(_)));
        assert_eq!(l.state.name(), "backoff");
        assert_eq!(l.on(Event::BackoffElapsed, t), vec![Action::Spawn]);
        assert_eq!(l.restarts, 1);
        // Not the initial start any more: ready again announces nothing.
        assert!(l.on(Event::ProvenReady, t).is_empty());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let l = ready_slot(Instant::now());
        assert_eq!(l.backoff(1), Duration::from_secs(1));
        assert_eq!(l.backoff(2), Duration::from_secs(2));
        assert_eq!(l.backoff(3), Duration::from_secs(4));
        assert_eq!(l.backoff(10), Duration::from_secs(30));
    }

    #[test]
    fn crash_loop_ends_failed() {
        let t = Instant::now();
        let mut l = ready_slot(t);
        for i in 0..4 {
            l.on(Event::ProvenReady, t);
            let a = l.on(exit(1), t + Duration::from_secs(i));
            assert!(matches!(a[0], Action::Wait(_)), "failure {i}");
            l.on(Event::BackoffElapsed, t);
        }
        l.on(Event::ProvenReady, t);
        assert!(l.on(exit(1), t + Duration::from_secs(5)).is_empty());
        match &l.state {
            State::Failed { reason } => assert!(reason.contains("crash loop: 5 failures")),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let t = Instant::now();
        let mut l = ready_slot(t);
        for i in 0..10u64 {
            l.on(Event::ProvenReady, t);
            let a = l.on(exit(1), t + Duration::from_secs(61 * i));
            assert!(matches!(a[0], Action::Wait(_)));
            l.on(Event::BackoffElapsed, t);
        }
    }

    #[test]
    fn three_failed_probes_restart() {
        let t = Instant::now();
        let mut l = ready_slot(t);
        let bad = || Event::Probe {
            ok: false,
            detail: "refused".into(),
        };
        assert!(l.on(bad(), t).is_empty());
        assert!(
            l.on(
                Event::Probe {
                    ok: true,
                    detail: String::new()
                },
                t
            )
            .is_empty()
        );
        assert!(l.on(bad(), t).is_empty());
        assert!(l.on(bad(), t).is_empty());
        assert_eq!(l.on(bad(), t), vec![Action::Terminate]);
        let a = l.on(exit(143), t);
        assert!(matches!(a[0], Action::Wait(_)));
    }

    #[test]
    fn deadline_replaces_without_counting_a_failure() {
        let t = Instant::now();
        let mut l = ready_slot(t);
        for _ in 0..10 {
            assert!(l.on(Event::Dispatched, t).is_empty());
            assert_eq!(l.on(Event::DeadlinePassed, t), vec![Action::Kill]);
            assert_eq!(l.on(exit(137), t), vec![Action::Spawn]);
            l.on(Event::ProvenReady, t);
            assert_eq!(l.state.name(), "ready");
        }
        assert_eq!(l.restarts, 10);
    }

    #[test]
    fn a_crash_while_busy_is_replaced_at_once_but_counts_towards_a_crash_loop() {
        let t = Instant::now();
        let mut l = ready_slot(t);
        for _ in 0..4 {
            l.on(Event::Dispatched, t);
            assert_eq!(l.on(exit(139), t), vec![Action::Spawn]);
            l.on(Event::ProvenReady, t);
        }
        l.on(Event::Dispatched, t);
        assert!(l.on(exit(139), t).is_empty());
        assert_eq!(l.state.name(), "failed");
    }

    #[test]
    fn protocol_violation_kills() {
        let t = Instant::now();
        let mut l = ready_slot(t);
        l.on(Event::Dispatched, t);
        assert_eq!(
            l.on(Event::ProtocolViolation("garbage".into()), t),
            vec![Action::Kill]
        );
        assert!(matches!(l.on(exit(137), t)[0], Action::Wait(_)));
    }

    #[test]
    fn setup_failure_fails_the_start() {
        let t = Instant::now();
        let (mut l, _) = Lifecycle::new(policy(), t);
        let a = l.on(Event::SetupFailed("Traceback".into()), t);
        assert_eq!(a[0], Action::Kill);
        assert!(
            matches!(&a[1], Action::FailStart { code: 1, message } if message.contains("Traceback"))
        );
    }

    #[test]
    fn stop_from_any_state() {
        let t = Instant::now();
        let mut l = ready_slot(t);
        assert_eq!(l.on(Event::StopRequested, t), vec![Action::Terminate]);
        assert!(l.on(exit(0), t).is_empty());
        assert_eq!(l.state, State::Stopped);
        let mut l = ready_slot(t);
        l.on(exit(1), t);
        assert!(l.on(Event::StopRequested, t).is_empty());
        assert_eq!(l.state, State::Stopped);
    }
}
