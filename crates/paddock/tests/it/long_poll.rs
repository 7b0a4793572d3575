//! Waiting for a job without polling: `GET /v1/jobs/{id}?wait=` answers when the job
//! finishes (the store wakes it), after the wait, or when the daemon stops.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Env, http_get, wait_until};
use crate::jobs::{Backend, enqueue_id};

fn waited(env: &Env, id: &str, wait: &str) -> (u16, Value, Duration) {
    let t = Instant::now();
    let (code, body) = http_get(env.port, &format!("/v1/jobs/{id}?wait={wait}")).unwrap();
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::Null),
        t.elapsed(),
    )
}

fn sleeper(env: &Env) {
    env.config(&env.worker(
        "sleepy",
        "workers = 1\nrequest_timeout = \"120s\"\nstop_timeout = \"2s\"",
    ));
}

fn answers_at_the_finish_or_the_end_of_the_wait(backend: Backend) {
    let env = backend.env();
    sleeper(&env);
    env.start_ok();
    // A job that takes 1.5 s: the wait ends with it, well before its 20 s.
    let id = enqueue_id(&env, "/v1/jobs/sleepy", &json!({"op": "sleep", "s": 1.5}));
    let (code, v, took) = waited(&env, &id, "20s");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["state"], "done", "{v}");
    assert!(
        took >= Duration::from_millis(1200),
        "answered before the job ended: {took:?}"
    );
    assert!(
        took < Duration::from_secs(6),
        "not woken by the finish: {took:?}"
    );
    // A finished job answers at once, whatever the wait.
    let (_, v, took) = waited(&env, &id, "60");
    assert_eq!(v["state"], "done");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // A job still running when the wait ends: its state of the moment.
    let slow = enqueue_id(&env, "/v1/jobs/sleepy", &json!({"op": "sleep", "s": 4}));
    let (code, v, took) = waited(&env, &slow, "400ms");
    assert_eq!(code, 200, "{v}");
    assert!(
        ["queued", "claimed", "running"].contains(&v["state"].as_str().unwrap()),
        "{v}"
    );
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // Cancelled while waited for: the cancel wakes it (cancelling a running job is
    // not in this store yet; a queued one behind the running one is).
    let queued = enqueue_id(&env, "/v1/jobs/sleepy", &json!({"op": "sleep", "s": 0.1}));
    let waiter = {
        let port = env.port;
        let queued = queued.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let (_, body) = http_get(port, &format!("/v1/jobs/{queued}?wait=30s")).unwrap();
            (serde_json::from_str::<Value>(&body).unwrap(), t.elapsed())
        })
    };
    wait_until(Duration::from_secs(10), "the waiter registered", || {
        (env.metric("paddock_jobs_waiting") >= 1.0).then_some(())
    });
    let r = crate::harness::request(env.port, "DELETE", &format!("/v1/jobs/{queued}"), "", b"")
        .unwrap();
    assert_eq!(r.code, 200, "{}", r.text());
    let (v, took) = waiter.join().unwrap();
    assert_eq!(v["state"], "cancelled", "{v}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // Mistakes are said, not waited out.
    let (code, v, _) = waited(&env, &slow, "soon");
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("wait=\"soon\""),
        "{v}"
    );
    let (code, _, took) = waited(&env, "j0000000000000000000000000000", "30s");
    assert_eq!(code, 404);
    assert!(took < Duration::from_secs(2), "{took:?}");
    env.stop_ok();
}

mod sqlite {
    #[test]
    fn answers_at_the_finish_or_the_end_of_the_wait() {
        super::answers_at_the_finish_or_the_end_of_the_wait(super::Backend::Sqlite)
    }
}

mod postgres {
    #[test]
    #[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
    fn answers_at_the_finish_or_the_end_of_the_wait() {
        super::answers_at_the_finish_or_the_end_of_the_wait(super::Backend::postgres())
    }

    /// Daemon B has no worker for the job: only A's NOTIFY can end B's wait early.
    #[test]
    #[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
    fn a_finish_on_another_daemon_wakes_the_wait() {
        let backend = super::Backend::postgres();
        let a = backend.env();
        super::sleeper(&a);
        let b = backend.env();
        b.config(&b.worker("other", "workers = 1"));
        a.start_ok();
        b.start_ok();
        let id = super::enqueue_id(
            &a,
            "/v1/jobs/sleepy",
            &serde_json::json!({"op": "sleep", "s": 1}),
        );
        let (code, v, took) = super::waited(&b, &id, "30s");
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["state"], "done", "{v}");
        assert!(
            took < std::time::Duration::from_secs(6),
            "B was not woken: {took:?}"
        );
        a.stop_ok();
        b.stop_ok();
    }
}

/// 500 clients wait for a job that cannot finish before the stop (it is queued
/// behind one that runs 2 s on the only worker); `stop` answers them all and takes
/// no longer than the running job does.
#[test]
fn five_hundred_waiting_clients_are_all_answered_when_the_daemon_stops() {
    let env = Backend::Sqlite.env();
    sleeper(&env);
    env.start_ok();
    let running = enqueue_id(&env, "/v1/jobs/sleepy", &json!({"op": "sleep", "s": 2}));
    wait_until(Duration::from_secs(10), "the first job running", || {
        let (_, v, _) = waited(&env, &running, "0");
        (v["state"] == "running").then_some(())
    });
    let id = enqueue_id(&env, "/v1/jobs/sleepy", &json!({"op": "sleep", "s": 100}));
    let port = env.port;
    let waiters: Vec<_> = (0..500)
        .map(|_| {
            let id = id.clone();
            std::thread::spawn(move || {
                http_get(port, &format!("/v1/jobs/{id}?wait=60s")).map(|(code, body)| {
                    (
                        code,
                        serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
                    )
                })
            })
        })
        .collect();
    wait_until(Duration::from_secs(30), "500 clients waiting", || {
        (env.metric("paddock_jobs_waiting") >= 500.0).then_some(())
    });
    let out = env.run(&["stop"]);
    assert_eq!(out.code, 0, "{out:?}");
    // The stop waits for the running job (2 s at most); the waits add nothing to it.
    assert!(
        out.took < Duration::from_secs(8),
        "stop took {:?}",
        out.took
    );
    let mut answered = 0;
    for w in waiters {
        let (code, v) = w
            .join()
            .unwrap()
            .expect("an answer, not a broken connection");
        assert_eq!(code, 200, "{v}");
        assert!(
            ["claimed", "queued"].contains(&v["state"].as_str().unwrap()),
            "{v}"
        );
        answered += 1;
    }
    assert_eq!(answered, 500);
    env.assert_nothing_left();
}
