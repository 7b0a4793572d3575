//! Durable jobs on the embedded store: the API, failures and dead jobs, and the
//! daemon SIGKILLed while jobs run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Env, Resp, kill, wait_until};

fn enqueue(env: &Env, path: &str, body: &Value, key: Option<&str>) -> Resp {
    let extra = key
        .map(|k| format!("Idempotency-Key: {k}\r\n"))
        .unwrap_or_default();
    crate::harness::post_with_headers(
        env.port,
        path,
        "application/json",
        &extra,
        body.to_string().as_bytes(),
    )
    .unwrap()
}

fn get_json(env: &Env, path: &str) -> (u16, Value) {
    let (code, body) = env.get(path).unwrap();
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn job(env: &Env, id: &str) -> Value {
    let (code, v) = get_json(env, &format!("/v1/jobs/{id}"));
    assert_eq!(code, 200, "{v}");
    v
}

fn wait_state(env: &Env, id: &str, state: &str) -> Value {
    wait_until(
        Duration::from_secs(30),
        &format!("job {id} to be {state}"),
        || {
            let j = job(env, id);
            (j["state"] == state).then_some(j)
        },
    )
}

/// Every job, through the paged list.
fn all_jobs(env: &Env, query: &str) -> Vec<Value> {
    let mut out = vec![];
    let mut after = 0;
    loop {
        let (code, v) = get_json(env, &format!("/v1/jobs?limit=500&after={after}{query}"));
        assert_eq!(code, 200, "{v}");
        out.extend(v["jobs"].as_array().unwrap().iter().cloned());
        match v["next"].as_i64() {
            Some(n) => after = n,
            None => return out,
        }
    }
}

#[test]
fn enqueue_run_result_idempotency_cancel_retry_and_paging() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1\njobs_share = 1.0"));
    env.start_ok();

    let r = enqueue(&env, "/v1/jobs/fake", &json!({"op": "echo", "n": 5}), None);
    assert_eq!(r.code, 202, "{}", r.text());
    assert_eq!(r.json()["state"], "queued");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let j = wait_state(&env, &id, "done");
    assert_eq!(j["attempts"], 1);
    assert!(j["finished_at"].is_string());
    let res = post_get(&env, &format!("/v1/jobs/{id}/result"));
    assert_eq!(res.code, 200);
    assert_eq!(res.json()["n"], 5);
    assert_eq!(res.header("content-type"), Some("application/json"));

    // A named method, raw bytes.
    let r = crate::harness::post(
        env.port,
        "/v1/jobs/fake/echo",
        "application/x-raw",
        b"\x00\x01raw",
    )
    .unwrap();
    let raw_id = r.json()["id"].as_str().unwrap().to_string();
    wait_state(&env, &raw_id, "done");
    let res = post_get(&env, &format!("/v1/jobs/{raw_id}/result"));
    assert_eq!(res.body, b"\x00\x01raw");
    assert_eq!(res.header("content-type"), Some("application/x-raw"));

    // The same Idempotency-Key twice: one job.
    let a = enqueue(
        &env,
        "/v1/jobs/fake",
        &json!({"op": "echo", "n": 1}),
        Some("order-42"),
    );
    let b = enqueue(
        &env,
        "/v1/jobs/fake",
        &json!({"op": "echo", "n": 1}),
        Some("order-42"),
    );
    assert_eq!(a.code, 202);
    assert_eq!(b.code, 200);
    assert_eq!(a.json()["id"], b.json()["id"]);
    assert_eq!(b.json()["created"], false);

    // Cancel: a slow job holds the one worker, the pump prefetches a few more, the
    // last ones stay queued and can be cancelled.
    let slow = enqueue(
        &env,
        "/v1/jobs/fake",
        &json!({"op": "sleep", "s": 1.5}),
        None,
    );
    let slow_id = slow.json()["id"].as_str().unwrap().to_string();
    wait_state(&env, &slow_id, "running");
    let ids: Vec<String> = (0..8)
        .map(|n| {
            enqueue(&env, "/v1/jobs/fake", &json!({"op": "echo", "n": n}), None).json()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let last = ids.last().unwrap();
    let c = delete(&env, &format!("/v1/jobs/{last}"));
    assert_eq!(c.code, 200, "{}", c.text());
    assert_eq!(c.json()["state"], "cancelled");
    // Cancelling a done job is a conflict.
    assert_eq!(delete(&env, &format!("/v1/jobs/{id}")).code, 409);
    assert_eq!(delete(&env, "/v1/jobs/nosuchjob").code, 404);
    for other in &ids[..ids.len() - 1] {
        wait_state(&env, other, "done");
    }
    assert_eq!(job(&env, last)["state"], "cancelled");
    // The result of a job that is not done: 409.
    assert_eq!(post_get(&env, &format!("/v1/jobs/{last}/result")).code, 409);

    // Retry through the CLI.
    let out = env.run(&["jobs", "retry", last]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_state(&env, last, "done");

    // Paging and filters.
    let all = all_jobs(&env, "");
    assert_eq!(all.len(), 12, "{all:?}");
    let seqs: Vec<i64> = all.iter().map(|j| j["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "ordered, no repeats: {seqs:?}"
    );
    let (_, page) = get_json(&env, "/v1/jobs?limit=5");
    assert_eq!(page["jobs"].as_array().unwrap().len(), 5);
    assert_eq!(page["next"], seqs[4]);
    assert_eq!(all_jobs(&env, "&state=done").len(), 12);
    assert_eq!(all_jobs(&env, "&service=nope").len(), 0);

    // The CLI shows and lists.
    let out = env.run(&["jobs", "show", &id]);
    assert!(out.stdout.contains("done"), "{out:?}");
    let out = env.run(&["jobs", "list", "--json", "--limit", "3"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 3);
    env.stop_ok();
    assert_eq!(env.run(&["jobs", "list"]).code, 4);
}

#[test]
fn a_poison_job_ends_dead_with_every_cause_and_others_are_unaffected() {
    let env = Env::new();
    env.config(&env.worker(
        "fake",
        "workers = 2\nmax_attempts = 3\njob_backoff = \"100ms\"\njobs_share = 1.0",
    ));
    env.start_ok();
    let poison = enqueue(&env, "/v1/jobs/fake", &json!({"op": "segv"}), None).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let raising = enqueue(&env, "/v1/jobs/fake", &json!({"op": "raise"}), None).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let good: Vec<String> = (0..40)
        .map(|n| {
            enqueue(&env, "/v1/jobs/fake", &json!({"op": "echo", "n": n}), None).json()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let p = wait_state(&env, &poison, "dead");
    assert_eq!(p["failures"], 3);
    let history = p["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{p}");
    for h in history {
        assert_eq!(h["outcome"], "failed");
        assert_eq!(h["cause"]["kind"], "crash");
        assert_eq!(h["cause"]["detail"]["signal"], "SIGSEGV", "{h}");
    }
    let r = wait_state(&env, &raising, "dead");
    assert_eq!(r["history"][0]["cause"]["kind"], "handler_error");
    assert!(
        r["history"][0]["cause"]["traceback"]
            .as_str()
            .unwrap()
            .contains("ValueError")
    );
    for id in &good {
        let j = wait_state(&env, id, "done");
        assert_eq!(j["failures"], 0);
    }
    // No handler: dead at once, not retried.
    let nope = crate::harness::post(env.port, "/v1/jobs/fake/nope", "text/plain", b"x").unwrap();
    let n = wait_state(&env, nope.json()["id"].as_str().unwrap(), "dead");
    assert_eq!(n["attempts"], 1);
    assert_eq!(n["history"][0]["cause"]["kind"], "no_handler");
    env.stop_ok();
}

#[test]
fn jobs_survive_the_daemon_being_sigkilled_three_times() {
    let env = Env::new();
    let record = env.path().join("record").display().to_string();
    env.config(&env.worker_with(
        "fake",
        "fake_worker.py",
        &[("FAKE_RECORD", &record)],
        "workers = 2\njobs_share = 1.0",
    ));
    env.start_ok();
    const N: usize = 2000;
    let mut ids = BTreeMap::new();
    for n in 0..N {
        let r = enqueue(
            &env,
            "/v1/jobs/fake",
            &json!({"op": "record", "n": n, "s": 0.004}),
            None,
        );
        assert_eq!(r.code, 202, "{}", r.text());
        ids.insert(r.json()["id"].as_str().unwrap().to_string(), n);
    }
    // Kill at three points spread over the run, each time the daemon is mid-work.
    for threshold in [350, 900, 1450] {
        wait_until(Duration::from_secs(60), "progress before a kill", || {
            let done = all_jobs(&env, "&state=done").len();
            (done >= threshold).then_some(())
        });
        kill(env.daemon_pid(), 9);
        wait_until(Duration::from_secs(10), "the lock to be released", || {
            (env.run(&["status"]).code == 4).then_some(())
        });
        env.start_ok();
    }
    let jobs = wait_until(Duration::from_secs(120), "every job done", || {
        let all = all_jobs(&env, "");
        all.iter().all(|j| j["state"] == "done").then_some(all)
    });
    // None missing, none extra.
    let seen: BTreeSet<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen.len(), N);
    assert_eq!(seen, ids.keys().cloned().collect());
    // Ran more than once only if it was running at a kill.
    let mut runs: BTreeMap<usize, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(&record).unwrap().lines() {
        *runs.entry(line.parse().unwrap()).or_default() += 1;
    }
    assert_eq!(runs.len(), N, "every job ran");
    let mut twice = 0;
    for j in &jobs {
        let n = ids[j["id"].as_str().unwrap()];
        if runs[&n] > 1 {
            twice += 1;
            let interrupted = j["history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["outcome"] == "interrupted");
            assert!(
                interrupted,
                "job {n} ran {} times but was never interrupted: {j}",
                runs[&n]
            );
        }
    }
    eprintln!("{twice} of {N} jobs ran more than once (each was running at a kill)");
    env.stop_ok();
    env.assert_nothing_left();
}

fn post_get(env: &Env, path: &str) -> Resp {
    crate::harness::request(env.port, "GET", path, "", b"").unwrap()
}

fn delete(env: &Env, path: &str) -> Resp {
    crate::harness::request(env.port, "DELETE", path, "", b"").unwrap()
}
