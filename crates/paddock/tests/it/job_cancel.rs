//! Cancelling a running job: a streaming handler gets CANCEL (its generator's
//! `finally` runs, the worker serves on); any other handler's worker is killed and
//! replaced without counting a failure; in a batch, the other jobs run again,
//! uncounted. The job ends `cancelled` and no late result is stored. On both stores.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Env, post, wait_until};
use crate::jobs::{Backend, delete, enqueue_id, job, wait_state};

fn worker_pid(env: &Env, service: &str) -> i64 {
    let st = env.status();
    let svc = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap()
        .clone();
    svc["workers"][0]["pid"].as_i64().unwrap_or(0)
}

fn cancel(env: &Env, id: &str) -> Value {
    let c = delete(env, &format!("/v1/jobs/{id}"));
    assert_eq!(c.code, 200, "{}", c.text());
    c.json()
}

fn cancelling_a_running_job(backend: Backend) {
    let env = backend.env();
    let streams = env.worker_with("s", "stream_worker.py", &[], "workers = 1");
    env.config(&format!(
        "{}{streams}",
        env.worker(
            "fake",
            "workers = 1\njobs_share = 1.0\nrequest_timeout = \"120s\"\ncrash_loop_failures = 3"
        )
    ));
    env.start_ok();

    // Five handlers that would each run a minute, cancelled in turn: each time the
    // worker is replaced, the job is cancelled, and no crash loop follows.
    for round in 0..5 {
        let before = worker_pid(&env, "fake");
        let id = enqueue_id(&env, "/v1/jobs/fake", &json!({"op": "sleep", "s": 60}));
        wait_state(&env, &id, "running");
        let v = cancel(&env, &id);
        assert_eq!(v["state"], "cancelled", "{v}");
        let after = wait_until(Duration::from_secs(20), "a new worker ready", || {
            let st = env.status();
            let w = &st["services"][0]["workers"][0];
            (w["state"] == "ready" && w["pid"].as_i64() != Some(before)).then(|| w.clone())
        });
        assert!(after["restarts"].as_u64().unwrap() > round, "{after}");
        let (code, _) =
            crate::harness::http_get(env.port, &format!("/v1/jobs/{id}/result")).unwrap();
        assert_eq!(code, 409, "no result for a cancelled job");
        assert_eq!(job(&env, &id)["state"], "cancelled");
    }
    let svc = &env.status()["services"][0];
    assert_eq!(svc["state"], "ready", "{svc}");

    // A finished job is not cancelled: 409.
    let done = enqueue_id(&env, "/v1/jobs/fake", &json!({"op": "echo", "n": 1}));
    wait_state(&env, &done, "done");
    let c = delete(&env, &format!("/v1/jobs/{done}"));
    assert_eq!(c.code, 409, "{}", c.text());

    // A streaming handler gets CANCEL: its generator's finally runs in the same
    // worker, which serves on.
    let marks = env.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let before = worker_pid(&env, "s");
    let id = enqueue_id(
        &env,
        "/v1/jobs/s/forever",
        &json!({"dir": marks.display().to_string()}),
    );
    wait_state(&env, &id, "running");
    assert_eq!(cancel(&env, &id)["state"], "cancelled");
    let finally = marks.join(format!("finally-{before}"));
    wait_until(Duration::from_secs(20), "the generator's finally", || {
        finally.exists().then_some(())
    });
    let r = post(env.port, "/v1/s/plain", "application/json", b"{}").unwrap();
    assert_eq!(r.code, 200, "{}", r.text());
    assert_eq!(
        r.json()["pid"].as_i64(),
        Some(before),
        "the streaming worker was not replaced"
    );
    env.stop_ok();
}

fn cancelling_a_job_in_a_batch(backend: Backend) {
    let env = backend.env();
    env.config(&env.worker_with(
        "b",
        "batch_worker.py",
        &[],
        "workers = 1\njobs_share = 1.0\nrequest_timeout = \"120s\"",
    ));
    env.start_ok();
    // The worker is held while four jobs queue up; then they go as one batch, one
    // of which hangs.
    let port = env.port;
    let hold = std::thread::spawn(move || {
        post(port, "/v1/b/hold", "application/json", br#"{"ms": 1500}"#).unwrap()
    });
    wait_until(Duration::from_secs(10), "the worker held", || {
        (env.status()["services"][0]["workers"][0]["state"] == "busy").then_some(())
    });
    let hang = enqueue_id(&env, "/v1/jobs/b/work", &json!({"op": "hang", "n": 0}));
    let others: Vec<String> = (1..4)
        .map(|n| enqueue_id(&env, "/v1/jobs/b/work", &json!({"op": "echo", "n": n})))
        .collect();
    assert_eq!(hold.join().unwrap().code, 200);
    wait_state(&env, &hang, "running");
    cancel(&env, &hang);
    for id in &others {
        let v = wait_state(&env, id, "done");
        assert_eq!(v["failures"], 0, "requeued uncounted: {v}");
    }
    assert_eq!(job(&env, &hang)["state"], "cancelled");
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(
        log.contains("was cancelled: killing the worker, the others go back to the queue"),
        "the cancel did not meet a batch:\n{log}"
    );
    env.stop_ok();
}

on_both_stores!(cancelling_a_running_job, cancelling_a_job_in_a_batch);
