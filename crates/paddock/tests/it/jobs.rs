//! Durable jobs: the API, failures and dead jobs, and the daemon SIGKILLed while
//! jobs run — the same tests on the embedded SQLite store and on PostgreSQL (when
//! `PADDOCK_TEST_POSTGRES` names a server, e.g. `postgres://postgres@127.0.0.1:55432`;
//! `.ci/postgres.sh` starts one). Plus two daemons sharing one PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Env, Resp, kill, wait_until};

#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Sqlite,
    /// A database URL, and the server it lives on (kept alive with the backend).
    Postgres(String, std::sync::Arc<crate::harness::PgServer>),
}

impl Backend {
    /// A fresh database on the test PostgreSQL server: the one
    /// `PADDOCK_TEST_POSTGRES` names, or else a throwaway server started for this
    /// test (and stopped when the backend is dropped).
    pub(crate) fn postgres() -> Backend {
        let server = crate::harness::PgServer::get();
        Backend::Postgres(server.database(), server)
    }

    pub(crate) fn env(&self) -> Env {
        let mut env = Env::new();
        if let Backend::Postgres(url, _) = self {
            env.instance_extra = format!("store = {url:?}\nlease_timeout = \"1s\"\n");
        }
        env
    }
}

on_both_stores!(api, poison, sigkill, claimed_ahead, store_cap);
use crate::job_stores::{claimed_ahead, store_cap};

/// Enqueues `n` record jobs from 8 threads; returns id -> n.
pub(crate) fn enqueue_records(env: &Env, n: usize, seconds: f64) -> BTreeMap<String, usize> {
    enqueue_records_meanwhile(env, n, seconds).join().unwrap()
}

/// `enqueue_records` on a thread of its own, so that the test can watch the jobs
/// run while they are being enqueued.
pub(crate) fn enqueue_records_meanwhile(
    env: &Env,
    n: usize,
    seconds: f64,
) -> std::thread::JoinHandle<BTreeMap<String, usize>> {
    let port = env.port;
    std::thread::spawn(move || enqueue_records_to(port, n, seconds))
}

fn enqueue_records_to(port: u16, n: usize, seconds: f64) -> BTreeMap<String, usize> {
    let handles: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut out = vec![];
                for i in (t..n).step_by(8) {
                    let body = json!({"op": "record", "n": i, "s": seconds}).to_string();
                    let r = crate::harness::post(
                        port,
                        "/v1/jobs/fake",
                        "application/json",
                        body.as_bytes(),
                    )
                    .unwrap();
                    assert_eq!(r.code, 202, "{}", r.text());
                    out.push((r.json()["id"].as_str().unwrap().to_string(), i));
                }
                out
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// Enqueues a job and returns its id.
pub(crate) fn enqueue_id(env: &Env, path: &str, body: &Value) -> String {
    let r = enqueue(env, path, body, None);
    assert_eq!(r.code, 202, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

pub(crate) fn enqueue(env: &Env, path: &str, body: &Value, key: Option<&str>) -> Resp {
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

pub(crate) fn get_json(env: &Env, path: &str) -> (u16, Value) {
    let (code, body) = env.get(path).unwrap();
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub(crate) fn job(env: &Env, id: &str) -> Value {
    let (code, v) = get_json(env, &format!("/v1/jobs/{id}"));
    assert_eq!(code, 200, "{v}");
    v
}

pub(crate) fn wait_state(env: &Env, id: &str, state: &str) -> Value {
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
pub(crate) fn all_jobs(env: &Env, query: &str) -> Vec<Value> {
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

/// Enqueue, run, result, idempotency, cancel, retry, paging.
fn api(backend: Backend) {
    let env = backend.env();
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
    // The same key with another request is a client's mistake: 409, never the old job.
    let c = enqueue(
        &env,
        "/v1/jobs/fake",
        &json!({"op": "echo", "n": 2}),
        Some("order-42"),
    );
    assert_eq!(c.code, 409, "{}", c.text());
    assert!(c.text().contains("order-42"), "{}", c.text());
    // A key paddock would not keep exactly is refused, never dropped (a dropped key
    // made a retry a second job): non-ASCII, empty, too long.
    let before = all_jobs(&env, "").len();
    let long = "k".repeat(100_000);
    for key in ["café-order-7", "", long.as_str()] {
        for _ in 0..2 {
            let r = enqueue(
                &env,
                "/v1/jobs/fake",
                &json!({"op": "echo", "n": 3}),
                Some(key),
            );
            assert_eq!(r.code, 400, "{}", r.text());
            assert!(
                r.json()["error"]
                    .as_str()
                    .unwrap()
                    .contains("1 to 255 visible ASCII"),
                "{}",
                r.text()
            );
        }
    }
    assert_eq!(all_jobs(&env, "").len(), before, "a refused key made a job");

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
        .map(|n| enqueue_id(&env, "/v1/jobs/fake", &json!({"op": "echo", "n": n})))
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
    assert_eq!(all_jobs(&env, "&service=fake").len(), 12);
    // An unknown service or parameter is refused, naming what exists, never an
    // empty page.
    let (code, v) = get_json(&env, "/v1/jobs?service=nope");
    assert_eq!(code, 404, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("\"nope\"") && e.contains("fake"), "{v}");
    let (code, v) = get_json(&env, "/v1/jobs?srvice=fake");
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("srvice"), "{v}");

    // The CLI shows and lists.
    let out = env.run(&["jobs", "show", &id]);
    assert!(out.stdout.contains("done"), "{out:?}");
    let out = env.run(&["jobs", "list", "--json", "--limit", "3"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 3);
    env.stop_ok();
    assert_eq!(env.run(&["jobs", "list"]).code, 4);
}

/// A poison job ends dead with every cause recorded; the others are unaffected.
fn poison(backend: Backend) {
    let env = backend.env();
    env.config(&env.worker(
        "fake",
        "workers = 2\nmax_attempts = 3\njob_backoff = \"100ms\"\njobs_share = 1.0",
    ));
    env.start_ok();
    let poison = enqueue_id(&env, "/v1/jobs/fake", &json!({"op": "segv"}));
    let raising = enqueue_id(&env, "/v1/jobs/fake", &json!({"op": "raise"}));
    // A request the handler refuses (4xx) would be refused again: dead at once.
    let refused = enqueue_id(&env, "/v1/jobs/fake", &json!({"op": "refuse"}));
    let refused_422 = enqueue_id(
        &env,
        "/v1/jobs/fake",
        &json!({"op": "refuse", "status": 422}),
    );
    let good: Vec<String> = (0..40)
        .map(|n| enqueue_id(&env, "/v1/jobs/fake", &json!({"op": "echo", "n": n})))
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
    // The error id, not the traceback (that is in the service's log).
    assert!(
        r["history"][0]["cause"]["error_id"]
            .as_str()
            .unwrap()
            .starts_with("E-"),
        "{r}"
    );
    assert!(!r.to_string().contains("Traceback"), "{r}");
    let f = wait_state(&env, &refused, "dead");
    assert_eq!(f["attempts"], 1, "{f}");
    assert_eq!(f["history"][0]["cause"]["kind"], "bad_request", "{f}");
    assert_eq!(
        f["history"][0]["cause"]["message"], "refused: bad field",
        "{f}"
    );
    let f = wait_state(&env, &refused_422, "dead");
    assert_eq!(f["attempts"], 1, "{f}");
    assert_eq!(f["history"][0]["cause"]["kind"], "refused", "{f}");
    assert_eq!(f["history"][0]["cause"]["status"], 422, "{f}");
    // Online, the client gets the handler's status and message.
    let r = crate::harness::call(env.port, "fake", &json!({"op": "refuse", "status": 422}));
    assert_eq!(r.code, 422, "{}", r.text());
    assert_eq!(r.json()["error"], "refused: bad field");
    for id in &good {
        let j = wait_state(&env, id, "done");
        assert_eq!(j["failures"], 0);
    }
    // No handler: refused at enqueue (the workers said which handlers they have).
    let nope = crate::harness::post(env.port, "/v1/jobs/fake/nope", "text/plain", b"x").unwrap();
    assert_eq!(nope.code, 404, "{}", nope.text());
    assert!(nope.text().contains("predict"), "{}", nope.text());
    env.stop_ok();
}

/// Configures service "fake": two workers, all of them for jobs, each run recorded
/// (`n pid` lines) in the returned file.
pub(crate) fn recording_service(env: &Env) -> String {
    let record = env.path().join("record").display().to_string();
    let gate = env.path().join("gate").display().to_string();
    env.config(&env.worker_with(
        "fake",
        "fake_worker.py",
        &[("FAKE_RECORD", &record), ("FAKE_GATE", &gate)],
        "workers = 2\njobs_share = 1.0\nrequest_timeout = \"120s\"",
    ));
    record
}

/// Holds every recorded job at its start until dropped (see `FAKE_GATE`): the
/// whole queue is enqueued before any job runs, however fast the workers are.
/// (An exclusive `flock`, released on drop.)
pub(crate) struct Gate(#[allow(dead_code)] paddock_sys::lock::HeldLock);

impl Gate {
    pub(crate) fn shut(env: &Env) -> Gate {
        let held = paddock_sys::lock::try_acquire(&env.path().join("gate"), Duration::ZERO)
            .unwrap()
            .expect("nothing else holds the gate");
        Gate(held)
    }
}

/// From a record file: how many times each job ran, and the worker pids that ran them.
pub(crate) fn read_runs(record: &str) -> (BTreeMap<usize, usize>, BTreeSet<String>) {
    let mut runs: BTreeMap<usize, usize> = BTreeMap::new();
    let mut pids = BTreeSet::new();
    for line in std::fs::read_to_string(record).unwrap().lines() {
        let mut f = line.split_whitespace();
        let n: usize = f.next().unwrap().parse().unwrap();
        pids.insert(f.next().unwrap().to_string());
        *runs.entry(n).or_default() += 1;
    }
    (runs, pids)
}

/// Every acknowledged job done (none missing, none extra), each ran at least
/// once, and a job ran more than once only if it was running at a kill (its
/// history says interrupted): how many ran more than once.
pub(crate) fn check_at_least_once(env: &Env, record: &str, ids: &BTreeMap<String, usize>) -> usize {
    let jobs = wait_until(Duration::from_secs(180), "every job done", || {
        let all = all_jobs(env, "");
        all.iter().all(|j| j["state"] == "done").then_some(all)
    });
    let seen: BTreeSet<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(jobs.len(), ids.len(), "every acknowledged job is there");
    assert_eq!(
        seen,
        ids.keys().cloned().collect(),
        "no job missing, none extra"
    );
    let (runs, _) = read_runs(record);
    let mut twice = 0;
    for j in &jobs {
        let n = ids[j["id"].as_str().unwrap()];
        let ran = runs.get(&n).copied().unwrap_or(0);
        assert!(ran >= 1, "job {n} never ran: {j}");
        if ran > 1 {
            twice += 1;
            let interrupted = j["history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["outcome"] == "interrupted");
            assert!(
                interrupted,
                "job {n} ran {ran} times but was never interrupted: {j}"
            );
        }
    }
    twice
}

/// Jobs survive the daemon being SIGKILLed three times.
fn sigkill(backend: Backend) {
    let env = backend.env();
    let record = recording_service(&env);
    env.start_ok();
    const N: usize = 2000;
    // 10 ms a job, and none runs before all are enqueued: otherwise, on a loaded
    // machine, the workers could empty the queue as fast as it fills, and no
    // moment with jobs running after the first threshold would come.
    let gate = Gate::shut(&env);
    let ids = enqueue_records(&env, N, 0.01);
    drop(gate);
    // Kill at three points spread over the run, each time the daemon is mid-work.
    for threshold in [350, 900, 1450] {
        wait_until(
            Duration::from_secs(60),
            "progress, and jobs running, before a kill",
            || {
                let done = all_jobs(&env, "&state=done").len();
                let running = all_jobs(&env, "&state=running").len();
                (done >= threshold && running > 0).then_some(())
            },
        );
        kill(env.daemon_pid(), 9);
        wait_until(Duration::from_secs(10), "the lock to be released", || {
            (env.run(&["status"]).code == 4).then_some(())
        });
        env.start_ok();
    }
    let twice = check_at_least_once(&env, &record, &ids);
    eprintln!("{twice} of {N} jobs ran more than once (each was running at a kill)");
    env.stop_ok();
    env.assert_nothing_left();
}

fn post_get(env: &Env, path: &str) -> Resp {
    crate::harness::request(env.port, "GET", path, "", b"").unwrap()
}

pub(crate) fn delete(env: &Env, path: &str) -> Resp {
    crate::harness::request(env.port, "DELETE", path, "", b"").unwrap()
}
