//! Crashes caused by requests fail those requests alone; a worker that cannot come
//! back makes its service `crash-looping`, answered 503 at once, never down for good.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Env, call, kill, wait_until};

fn service(env: &Env) -> Value {
    env.status()["services"][0].clone()
}

#[test]
fn a_crash_storm_of_bad_requests_never_takes_the_service_down() {
    let env = Env::new();
    // Default restart settings: what a user gets without tuning anything.
    env.config(&env.worker("fake", "workers = 2"));
    env.start_ok();
    let mut states = std::collections::BTreeSet::new();
    for i in 0..50 {
        let r = call(env.port, "fake", &json!({"op": "segv"}));
        assert_eq!(r.code, 502, "bad request {i}: {}", r.text());
        assert_eq!(r.json()["cause"]["signal"], "SIGSEGV", "request {i}");
        states.insert(service(&env)["state"].as_str().unwrap().to_string());
    }
    for i in 0..100 {
        let r = call(env.port, "fake", &json!({"op": "echo", "n": i}));
        assert_eq!(r.code, 200, "healthy request {i}: {}", r.text());
    }
    assert!(
        !states.contains("failed") && !states.contains("crash-looping"),
        "the service went down: {states:?}"
    );
    // The last crash's replacement may still be starting.
    let st = wait_until(Duration::from_secs(10), "every worker ready", || {
        let s = service(&env);
        (s["state"] == "ready").then_some(s)
    });
    let restarts: u64 = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["restarts"].as_u64().unwrap())
        .sum();
    assert_eq!(restarts, 50, "one replacement per crash: {st}");
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn a_crash_looping_service_answers_503_at_once_and_recovers_by_itself() {
    let env = Env::new();
    let gate = env.path().join("broken");
    let gate_s = gate.display().to_string();
    env.config(&env.worker_with(
        "fake",
        "fake_worker.py",
        &[("FAKE_EXIT_IF_EXISTS", &gate_s)],
        "workers = 1\nbackoff_initial = \"50ms\"\nbackoff_max = \"1s\"\ncrash_loop_failures = 3",
    ));
    env.start_ok();
    // From now on the worker cannot start again (its weights "went missing").
    std::fs::write(&gate, "").unwrap();
    let pid = service(&env)["workers"][0]["pid"].as_i64().unwrap() as i32;
    kill(pid, 9);
    let st = wait_until(Duration::from_secs(20), "crash-looping", || {
        let s = service(&env);
        (s["state"] == "crash-looping").then_some(s)
    });
    assert!(
        st["reason"]
            .as_str()
            .unwrap()
            .contains("exited with status 1"),
        "{st}"
    );
    // While no worker can serve, a request is answered at once, with the cause
    // and a Retry-After, instead of waiting for its client to give up.
    let t = Instant::now();
    let r = call(env.port, "fake", &json!({"op": "echo", "n": 1}));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.code, 503, "{}", r.text());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let v = r.json();
    assert_eq!(v["cause"]["state"], "crash-looping", "{v}");
    assert!(
        v["cause"]["reason"]
            .as_str()
            .unwrap()
            .contains("crash loop"),
        "{v}"
    );
    // The cause is fixed: the next try (every backoff_max) brings it back.
    std::fs::remove_file(&gate).unwrap();
    wait_until(Duration::from_secs(20), "the service to recover", || {
        (service(&env)["state"] == "ready").then_some(())
    });
    let r = call(env.port, "fake", &json!({"op": "echo", "n": 2}));
    assert_eq!(r.code, 200, "{}", r.text());
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn the_first_crash_in_a_while_is_restarted_at_once() {
    let env = Env::new();
    // A backoff long enough that waiting it out could not go unnoticed.
    env.config(&env.worker(
        "fake",
        "workers = 1\nbackoff_initial = \"20s\"\nbackoff_max = \"60s\"\nstable_after = \"1s\"",
    ));
    env.start_ok();
    for round in 0..2 {
        let before = service(&env)["workers"][0].clone();
        // Ready for longer than stable_after (the same process, all along): this
        // crash is a first one. Time passing is the event waited for here.
        let seen = Instant::now();
        wait_until(Duration::from_secs(5), "a stable worker", || {
            let w = service(&env)["workers"][0].clone();
            assert_eq!(w["pid"], before["pid"], "the worker must stay up: {w}");
            (seen.elapsed() > Duration::from_millis(1200)).then_some(())
        });
        kill(before["pid"].as_i64().unwrap() as i32, 9);
        let t = Instant::now();
        let w = wait_until(Duration::from_secs(15), "the replacement", || {
            let w = service(&env)["workers"][0].clone();
            (w["generation"].as_u64() > before["generation"].as_u64() && w["state"] == "ready")
                .then_some(w)
        });
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "round {round}: {:?} {w}",
            t.elapsed()
        );
        assert_eq!(w["last_exit"]["signal"], "SIGKILL", "{w}");
    }
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(!log.contains("restarting in"), "no backoff was due:\n{log}");
    env.stop_ok();
}
