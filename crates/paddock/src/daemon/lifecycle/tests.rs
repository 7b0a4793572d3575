//! The transition table, event by event: no process, no clock.

use super::*;

fn policy() -> Policy {
    Policy {
        health_failures: 3,
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(30),
        crash_loop_failures: 5,
        crash_loop_window: Duration::from_secs(60),
        stable_after: Duration::from_secs(10),
        stop_timeout: Duration::from_secs(10),
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
    let a = l.on(
        Event::StartupTimedOut {
            after: Duration::from_secs(3),
            last: "loading (HELLO received)".into(),
        },
        t,
    );
    assert_eq!(a[0], Action::Kill);
    assert!(matches!(a[1], Action::FailStart { code: 5, .. }));
}

#[test]
fn exit_zero_after_ready_is_a_failure_restarted_at_once_the_first_time() {
    let t = Instant::now();
    let mut l = ready_slot(t);
    assert_eq!(l.on(exit(0), t), vec![Action::Spawn]);
    assert_eq!(l.state.name(), "starting");
    assert_eq!(l.restarts, 1);
    // Not the initial start any more: ready again announces nothing.
    assert!(l.on(Event::ProvenReady, t).is_empty());
    // A second failure soon after waits backoff_initial.
    let a = l.on(exit(0), t + Duration::from_secs(1));
    assert!(matches!(a[0], Action::Wait(_)), "{a:?}");
    assert_eq!(l.state.name(), "backoff");
    assert_eq!(l.on(Event::BackoffElapsed, t), vec![Action::Spawn]);
    assert_eq!(l.restarts, 2);
}

#[test]
fn backoff_doubles_and_caps() {
    let l = ready_slot(Instant::now());
    assert_eq!(l.backoff(1), Duration::from_secs(1));
    assert_eq!(l.backoff(2), Duration::from_secs(2));
    assert_eq!(l.backoff(3), Duration::from_secs(4));
    assert_eq!(l.backoff(10), Duration::from_secs(30));
}

/// Fails a ready worker at `at`; returns the delay before its next spawn.
fn fail_ready(l: &mut Lifecycle, at: Instant) -> Duration {
    let a = l.on(exit(1), at);
    let delay = match a.as_slice() {
        [Action::Spawn] => Duration::ZERO,
        [Action::Wait(d)] => {
            assert_eq!(l.on(Event::BackoffElapsed, at + *d), vec![Action::Spawn]);
            *d
        }
        other => panic!("{other:?}"),
    };
    l.on(Event::ProvenReady, at + delay);
    delay
}

#[test]
fn backoff_grows_only_over_failures_close_together_and_resets_when_stable() {
    let t = Instant::now();
    let mut l = ready_slot(t);
    // Ready for a while, then three failures a few seconds apart (each worker
    // ready in between for less than stable_after): 0, then 1s, then 2s.
    let mut at = t + Duration::from_secs(3600);
    let mut delays = vec![];
    for _ in 0..3 {
        delays.push(fail_ready(&mut l, at));
        at += Duration::from_secs(3);
    }
    assert_eq!(
        delays,
        vec![
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(2)
        ]
    );
    // Ready for stable_after: the next failure is a first one again.
    at += Duration::from_secs(10);
    assert_eq!(fail_ready(&mut l, at), Duration::ZERO);
}

#[test]
fn a_crash_loop_keeps_retrying_every_backoff_max_and_recovers() {
    let t = Instant::now();
    let mut l = ready_slot(t);
    let mut at = t;
    for i in 0..4 {
        let a = l.on(exit(1), at);
        assert!(!a.is_empty(), "failure {i}");
        if let [Action::Wait(d)] = a.as_slice() {
            at += *d;
            l.on(Event::BackoffElapsed, at);
        }
        l.on(Event::ProvenReady, at);
    }
    let a = l.on(exit(1), at);
    assert_eq!(a, vec![Action::Wait(Duration::from_secs(30))]);
    match &l.state {
        State::CrashLoop { reason, until } => {
            assert!(reason.contains("crash loop: 5 failures"), "{reason}");
            assert!(reason.contains("exited with status 1"), "{reason}");
            assert_eq!(*until, at + Duration::from_secs(30));
        }
        s => panic!("{s:?}"),
    }
    assert_eq!(l.state.name(), "crash-looping");
    // It tries again; a failure to start keeps it in the loop, at backoff_max.
    at += Duration::from_secs(30);
    assert_eq!(l.on(Event::BackoffElapsed, at), vec![Action::Spawn]);
    assert_eq!(
        l.on(Event::SpawnFailed("no such file".into()), at),
        vec![Action::Wait(Duration::from_secs(30))]
    );
    assert_eq!(l.state.name(), "crash-looping");
    // A stop ends it at once: no process is running.
    at += Duration::from_secs(30);
    assert_eq!(l.on(Event::BackoffElapsed, at), vec![Action::Spawn]);
    assert!(l.on(Event::ProvenReady, at).is_empty());
    assert_eq!(l.state.name(), "ready");
}

#[test]
fn failures_outside_the_window_are_forgotten() {
    let t = Instant::now();
    let mut l = ready_slot(t);
    for i in 0..10u64 {
        l.on(Event::ProvenReady, t);
        let a = l.on(exit(1), t + Duration::from_secs(61 * i));
        assert!(!matches!(l.state, State::CrashLoop { .. }), "{a:?}");
        if let [Action::Wait(_)] = a.as_slice() {
            l.on(Event::BackoffElapsed, t);
        }
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
    assert_eq!(l.on(exit(143), t), vec![Action::Spawn]);
    assert_eq!(l.restarts, 1);
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
fn crashes_while_busy_are_replaced_at_once_and_never_make_a_crash_loop() {
    let t = Instant::now();
    let mut l = ready_slot(t);
    for _ in 0..50 {
        l.on(Event::Dispatched, t);
        assert_eq!(l.on(exit(139), t), vec![Action::Spawn]);
        l.on(Event::ProvenReady, t);
    }
    assert_eq!(l.state.name(), "ready");
    assert_eq!(l.restarts, 50);
    // They are not counted: an idle death afterwards is a first failure.
    assert_eq!(l.on(exit(1), t), vec![Action::Spawn]);
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
    assert_eq!(l.on(exit(137), t), vec![Action::Spawn]);
    assert_eq!(l.restarts, 1);
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
    l.on(exit(1), t);
    assert_eq!(l.state.name(), "backoff");
    assert!(l.on(Event::StopRequested, t).is_empty());
    assert_eq!(l.state, State::Stopped);
}

#[test]
fn a_retiring_worker_finishes_its_request_then_stops_and_is_never_respawned() {
    let t = Instant::now();
    let mut l = ready_slot(t);
    l.on(Event::Dispatched, t);
    assert!(l.on(Event::RetireRequested, t).is_empty());
    assert_eq!(
        l.state.name(),
        "busy",
        "the request in hand is finished first"
    );
    assert_eq!(l.on(Event::Finished, t), vec![Action::Terminate]);
    assert!(l.on(exit(0), t).is_empty());
    assert_eq!(l.state, State::Stopped);
    // A retiring worker that dies (or is killed for a deadline) is not replaced.
    for ending in [exit(139), Event::DeadlinePassed] {
        let mut l = ready_slot(t);
        l.on(Event::Dispatched, t);
        l.on(Event::RetireRequested, t);
        l.on(ending, t);
        assert!(l.on(exit(137), t).is_empty());
        assert_eq!(l.state, State::Stopped);
        assert_eq!(l.restarts, 0);
    }
    // Idle, it stops at once.
    let mut l = ready_slot(t);
    assert_eq!(l.on(Event::RetireRequested, t), vec![Action::Terminate]);
}

#[test]
fn every_sigterm_arms_a_sigkill_that_an_exit_disarms() {
    let t = Instant::now();
    let mut l = ready_slot(t);
    assert_eq!(l.clocks().count(), 0);
    assert_eq!(l.on(Event::StopRequested, t), vec![Action::Terminate]);
    assert_eq!(
        l.clocks().collect::<Vec<_>>(),
        vec![(t + Duration::from_secs(10), Clock::Kill)]
    );
    // The grace period is over: SIGKILL, once.
    let later = t + Duration::from_secs(10);
    assert_eq!(l.on(Event::GraceOver, later), vec![Action::Kill]);
    assert_eq!(l.kill_at, None);
    assert!(l.on(exit(137), later).is_empty());
    assert_eq!(l.state, State::Stopped);
    // A health restart's SIGTERM too; the exit disarms it.
    let mut l = ready_slot(t);
    for _ in 0..3 {
        l.on(
            Event::Probe {
                ok: false,
                detail: "refused".into(),
            },
            t,
        );
    }
    assert_eq!(l.state.name(), "restarting");
    assert!(l.kill_at.is_some());
    l.on(exit(0), t);
    assert_eq!(l.kill_at, None);
}

#[test]
fn a_closed_socket_gives_the_worker_a_second_to_exit() {
    let t = Instant::now();
    let mut l = ready_slot(t);
    assert!(l.on(Event::SocketClosed, t).is_empty());
    assert_eq!(
        l.clocks().collect::<Vec<_>>(),
        vec![(t + SOCKET_CLOSED_GRACE, Clock::SocketClosed)]
    );
    // Still running when it passes: the actor reports a protocol violation.
    let a = l.on(Event::ProtocolViolation("closed its socket".into()), t);
    assert_eq!(a, vec![Action::Kill]);
    assert_eq!(l.eof_at, None);
    // An exit in time disarms it.
    let mut l = ready_slot(t);
    l.on(Event::SocketClosed, t);
    l.on(exit(0), t);
    assert_eq!(l.eof_at, None);
}

#[test]
fn the_backoff_and_startup_clocks_follow_the_state() {
    let t = Instant::now();
    let (mut l, _) = Lifecycle::new(policy(), t);
    l.startup_timeout = Duration::from_secs(60);
    assert_eq!(
        l.clocks().collect::<Vec<_>>(),
        vec![(t + Duration::from_secs(60), Clock::Startup)]
    );
    l.on(Event::ProvenReady, t);
    l.on(exit(1), t);
    l.on(Event::ProvenReady, t);
    l.on(exit(1), t);
    let State::Backoff { until } = l.state else {
        panic!("expected a backoff, got {:?}", l.state)
    };
    assert_eq!(
        l.clocks().collect::<Vec<_>>(),
        vec![(until, Clock::Backoff)]
    );
    assert_eq!(l.on(Event::BackoffElapsed, until), vec![Action::Spawn]);
}

#[test]
fn a_setup_failure_says_what_its_first_line_says() {
    use super::setup_failure;
    // What the SDK sends for an exception in setup().
    let (reason, message) =
        setup_failure("setup() raised an exception:\nTraceback (most recent call last):\nE: x\n");
    assert_eq!(reason, "setup() raised an exception");
    assert!(message.ends_with("E: x"), "{message}");
    // A worker mistake that is not setup's.
    let (reason, message) = setup_failure("Empty has no handler: mark one\n\n  @paddock.handler\n");
    assert_eq!(reason, "Empty has no handler: mark one");
    assert!(!message.contains("setup()"), "{message}");
    // Older SDKs: a bare traceback.
    let (reason, message) = setup_failure("Traceback (most recent call last):\nE: x");
    assert_eq!(reason, "setup() raised an exception");
    assert!(
        message.starts_with("setup() raised an exception:\nTraceback"),
        "{message}"
    );
}

#[test]
fn an_incompatible_sdk_fails_the_start_and_later_fails_the_slot_without_a_restart_loop() {
    let t = Instant::now();
    let (mut l, _) = Lifecycle::new(policy(), t);
    let a = l.on(Event::Incompatible("protocol 7; fix: pip".into()), t);
    assert_eq!(a[0], Action::Kill);
    assert!(
        matches!(&a[1], Action::FailStart { code: 1, message } if message == "protocol 7; fix: pip"),
        "{a:?}"
    );
    assert_eq!(l.state.name(), "failed");

    // After the initial start (the SDK changed under a running service): the slot
    // fails and stays failed whatever follows, instead of crash-looping.
    let mut l = ready_slot(t);
    assert_eq!(l.on(exit(1), t), vec![Action::Spawn]);
    assert_eq!(
        l.on(Event::Incompatible("protocol 7".into()), t),
        vec![Action::Kill]
    );
    assert_eq!(l.state.name(), "failed");
    assert!(l.on(exit(-9), t).is_empty());
    assert!(l.on(Event::BackoffElapsed, t).is_empty());
    assert_eq!(l.state.name(), "failed");
    assert_eq!(l.restarts, 1);
}

#[test]
fn a_cancelled_job_replaces_its_worker_without_counting_a_failure() {
    let t = Instant::now();
    let mut l = ready_slot(t);
    for i in 0..20 {
        let now = t + Duration::from_millis(i);
        assert!(l.on(Event::Dispatched, now).is_empty());
        assert_eq!(l.on(Event::Cancelled, now), vec![Action::Kill]);
        assert_eq!(l.state.name(), "replacing");
        assert_eq!(l.on(exit(-9), now), vec![Action::Spawn]);
        assert!(l.on(Event::ProvenReady, now).is_empty());
    }
    assert_eq!(l.state.name(), "ready", "twenty cancels make no crash loop");
    assert_eq!(l.restarts, 20);
}
