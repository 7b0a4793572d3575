//! `stop` waits for the drain it asked for, says what it waits on, and its own
//! deadline follows from the config; a daemon that never stops is exit 6.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Env, call, kill, wait_until};

/// Waits until the service's first worker is serving a request.
fn wait_busy(env: &Env) {
    wait_until(Duration::from_secs(10), "the worker to be busy", || {
        (env.status()["services"][0]["workers"][0]["state"] == "busy").then_some(())
    });
}

/// `paddock stop` in another thread: its output, and how long it took.
fn stop_in_background(env: &Env) -> std::thread::JoinHandle<(std::process::Output, Duration)> {
    let mut cmd = env.command(&["stop"]);
    std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let out = cmd.output().unwrap();
        (out, t.elapsed())
    })
}

#[test]
fn stop_waits_for_a_long_request_to_drain_and_says_so() {
    let env = Env::new();
    // The request runs longer than the old fixed limit (stop_timeout + 15s = 16s).
    env.config(&env.worker(
        "fake",
        "workers = 1\nrequest_timeout = \"40s\"\nstop_timeout = \"1s\"",
    ));
    env.start_ok();
    let port = env.port;
    let client = std::thread::spawn(move || call(port, "fake", &json!({"op": "sleep", "s": 18})));
    wait_busy(&env);
    let out = env.run_with(&["stop"], Duration::from_secs(90));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("at most 57s"), "{out:?}");
    assert!(out.stderr.contains("waiting for fake/0 (busy)"), "{out:?}");
    let r = client.join().unwrap();
    assert_eq!(
        r.code,
        200,
        "the request in flight is answered: {}",
        r.text()
    );
    env.assert_nothing_left();
}

#[test]
fn a_daemon_that_does_not_stop_in_time_is_exit_6() {
    let env = Env::new();
    env.config(&env.worker(
        "fake",
        "workers = 1\nrequest_timeout = \"5s\"\nstop_timeout = \"1s\"",
    ));
    env.start_ok();
    let pid = env.lock_info().unwrap()["pid"].as_i64().unwrap() as i32;
    let port = env.port;
    let client = std::thread::spawn(move || call(port, "fake", &json!({"op": "sleep", "s": 4})));
    wait_busy(&env);
    let stopper = stop_in_background(&env);
    // The daemon took the stop and is draining the request: freeze it there.
    wait_until(Duration::from_secs(10), "the stop to be taken", || {
        let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).ok()?;
        log.contains("stop requested").then_some(())
    });
    kill(pid, 19);
    let (out, took) = stopper.join().unwrap();
    kill(pid, 18);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    // 5s request_timeout + 1s + 1s stop_timeout + 15s.
    assert!(stderr.contains("did not stop within 22s"), "{stderr}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let _ = client.join();
    // Once thawed it finishes its stop.
    wait_until(
        Duration::from_secs(20),
        "the daemon to finish stopping",
        || (env.run(&["status"]).code == 4).then_some(()),
    );
    env.assert_nothing_left();
}

#[test]
fn nothing_is_spawned_once_a_stop_began_and_status_says_stopping() {
    let env = Env::new();
    // "a" hits its 2 s deadline while the stop still waits on "b"'s longer request:
    // the deadline kill must not be followed by a replacement.
    env.config(&format!(
        "{}{}",
        env.worker(
            "a",
            "workers = 1\nrequest_timeout = \"2s\"\nstop_timeout = \"1s\""
        ),
        env.worker(
            "b",
            "workers = 1\nrequest_timeout = \"10s\"\nstop_timeout = \"1s\""
        )
    ));
    env.start_ok();
    let port = env.port;
    let spin = std::thread::spawn(move || call(port, "a", &json!({"op": "spin"})));
    let slow = std::thread::spawn(move || call(port, "b", &json!({"op": "sleep", "s": 4})));
    wait_until(Duration::from_secs(10), "both workers busy", || {
        let st = env.status();
        (st["services"][0]["workers"][0]["state"] == "busy"
            && st["services"][1]["workers"][0]["state"] == "busy")
            .then_some(())
    });
    let stopper = stop_in_background(&env);
    // While it drains: the services are "stopping", and the busy workers keep their
    // READY SINCE.
    let st = wait_until(Duration::from_secs(10), "status while stopping", || {
        let out = env.run(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        (v["services"][1]["state"] == "stopping").then_some(v)
    });
    let w = &st["services"][1]["workers"][0];
    assert!(w["ready_since"].is_string(), "{st}");
    assert!(
        st["services"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("stopping"),
        "{st}"
    );
    let (out, _) = stopper.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let r = spin.join().unwrap();
    assert_eq!(r.code, 504, "{}", r.text());
    let r = slow.join().unwrap();
    assert_eq!(r.code, 200, "{}", r.text());
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(log.contains("generation=1"), "{log}");
    assert!(
        !log.contains("generation=2"),
        "a replacement was spawned:\n{log}"
    );
    env.assert_nothing_left();
}
