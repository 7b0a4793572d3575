//! After start: crashes are restarted (at once the first time, then with backoff),
//! crash loops are reported and keep retrying every `backoff_max`, and a service
//! that stops answering its health probe is restarted.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Env, wait_until};

fn worker(st: &Value) -> Value {
    st["services"][0]["workers"][0].clone()
}

#[test]
fn a_crash_after_ready_is_restarted_then_a_crash_loop_keeps_retrying() {
    let env = Env::new();
    env.config(&env.fake(
        "web",
        "--port {port} --crash-after 0.3",
        "port = \"auto\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\ncrash_loop_failures = 4\ncrash_loop_window = \"60s\"",
    ));
    env.start_ok();
    let first = worker(&env.status());
    assert_eq!(first["generation"], 1);

    // Restarted: a new generation becomes ready, and the crash is recorded.
    let w = wait_until(Duration::from_secs(20), "a restarted worker", || {
        let w = worker(&env.status());
        (w["generation"].as_u64() >= Some(2) && w["restarts"].as_u64() >= Some(1)).then_some(w)
    });
    let exit = &w["last_exit"];
    assert_eq!(exit["exit_code"], 1, "{w}");
    assert_eq!(exit["signal"], Value::Null, "{w}");
    assert_eq!(exit["requested"], false);

    // Crash loop: reported by status, /readyz and metrics, with the last cause...
    let st = wait_until(
        Duration::from_secs(30),
        "the crash loop to be detected",
        || {
            let st = env.status();
            (st["services"][0]["state"] == "crash-looping").then_some(st)
        },
    );
    let reason = st["services"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("crash loop"), "{reason}");
    assert!(reason.contains("exited with status 1"), "{reason}");
    assert_eq!(st["instance"]["ready"], false);
    let (code, body) = env.get("/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("crash loop"), "{body}");
    let (_, metrics) = env.get("/metrics").unwrap();
    assert!(metrics.contains("state=\"crash-looping\"} 1"), "{metrics}");
    let out = env.run(&["status"]);
    assert!(out.stdout.contains("crash-looping"), "{out:?}");
    // ...and it is never down for good: it keeps trying every backoff_max.
    let generation = worker(&st)["generation"].as_u64().unwrap();
    wait_until(
        Duration::from_secs(20),
        "another try after the crash loop",
        || (worker(&env.status())["generation"].as_u64() > Some(generation + 1)).then_some(()),
    );
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn a_killed_worker_is_reported_by_signal_name() {
    let env = Env::new();
    env.config(&env.fake(
        "web",
        "--port {port}",
        "port = \"auto\"\nbackoff_initial = \"100ms\"",
    ));
    env.start_ok();
    let pid = worker(&env.status())["pid"].as_i64().unwrap() as i32;
    crate::harness::kill(pid, 9);
    let w = wait_until(Duration::from_secs(20), "the replacement", || {
        let w = worker(&env.status());
        (w["generation"] == 2 && w["state"] == "ready").then_some(w)
    });
    assert_eq!(w["last_exit"]["signal"], "SIGKILL", "{w}");
    assert_eq!(w["last_exit"]["exit_code"], Value::Null, "{w}");
    assert_ne!(w["pid"].as_i64().unwrap() as i32, pid);
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn a_service_failing_its_health_probe_is_restarted_after_three_failures() {
    let env = Env::new();
    env.config(&env.fake(
        "web",
        "--port {port} --unhealthy-after 0.5",
        "port = \"auto\"\nhealth = { http = \"/health\" }\nhealth_interval = \"200ms\"\nbackoff_initial = \"100ms\"",
    ));
    env.start_ok();
    let w = wait_until(Duration::from_secs(20), "a health restart", || {
        let w = worker(&env.status());
        (w["generation"].as_u64() >= Some(2)).then_some(w)
    });
    assert_eq!(w["last_exit"]["requested"], true, "paddock killed it: {w}");
    let log = std::fs::read_to_string(env.state_dir().join("logs/web.log")).unwrap();
    let failures = log.matches("health probe failed").count();
    assert!(
        failures >= 3,
        "expected 3 probe failures before the restart:\n{log}"
    );
    let daemon_log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(
        daemon_log.contains("health check failed 3 times in a row"),
        "{daemon_log}"
    );
    env.stop_ok();
    env.assert_nothing_left();
}
