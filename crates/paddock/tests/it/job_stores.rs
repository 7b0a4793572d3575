//! Job stores under a daemon's life: jobs claimed ahead of the workers, the store's
//! size limit, two daemons sharing one PostgreSQL, a graceful stop with jobs
//! running, one SQLite store per instance, and PostgreSQL going away and coming
//! back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Env, kill, wait_until};
use crate::jobs::{
    Backend, Gate, all_jobs, delete, enqueue, enqueue_id, enqueue_records,
    enqueue_records_meanwhile, get_json, job, read_runs, recording_service, wait_state,
};

/// Two daemons (two ports of one config) share one PostgreSQL queue: none lost, none
/// run twice without a kill; after one is SIGKILLed, the other finishes its jobs
/// once their leases expire.
#[test]
#[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
fn two_daemons_share_one_postgres() {
    let backend = Backend::postgres();
    let mut env = backend.env();
    env.instance_extra = env
        .instance_extra
        .replace("lease_timeout = \"1s\"", "lease_timeout = \"2s\"");
    let record = recording_service(&env);
    let port_b = crate::harness::free_port();
    env.start_ok();
    let out = env.run(&["--port", &port_b.to_string(), "start"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lock_b = env.path().join(format!("state/t-{port_b}/lock"));
    let info: Value = serde_json::from_str(&std::fs::read_to_string(&lock_b).unwrap()).unwrap();
    let pid_b = info["pid"].as_i64().unwrap() as i32;

    const N: usize = 2000;
    // 20 ms a job. Watched while they are enqueued: on a loaded machine the
    // workers can finish the queue before the last enqueue is answered, and then
    // no moment with B running jobs would come.
    let enqueueing = enqueue_records_meanwhile(&env, N, 0.02);
    // Kill B while it is running jobs (its pid is in their owner).
    let b_owner = format!(":{pid_b}@");
    wait_until(
        Duration::from_secs(60),
        "daemon B to be running jobs",
        || {
            let done = all_jobs(&env, "&state=done").len();
            let running = all_jobs(&env, "&state=running");
            let b_busy = running
                .iter()
                .any(|j| j["owner"].as_str().is_some_and(|o| o.contains(&b_owner)));

            (done >= 200 && b_busy).then_some(())
        },
    );
    let running = all_jobs(&env, "&state=running").len();
    kill(pid_b, 9);
    eprintln!("{running} jobs running (both daemons) at the kill");
    let ids = enqueueing.join().unwrap();
    let jobs = wait_until(Duration::from_secs(120), "every job done", || {
        let all = all_jobs(&env, "");
        all.iter().all(|j| j["state"] == "done").then_some(all)
    });
    assert_eq!(jobs.len(), N);
    let (runs, pids) = read_runs(&record);
    assert_eq!(runs.len(), N, "every job ran");
    assert!(pids.len() >= 4, "both daemons' workers ran jobs: {pids:?}");
    let mut taken_over = 0;
    for j in &jobs {
        let n = ids[j["id"].as_str().unwrap()];
        let interrupted = j["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["outcome"] == "interrupted");
        if interrupted {
            taken_over += 1;
        }
        if runs[&n] > 1 {
            assert!(
                interrupted,
                "job {n} ran {} times without a kill: {j}",
                runs[&n]
            );
        }
    }
    eprintln!("{taken_over} jobs of the killed daemon were taken over after their leases expired");
    assert!(taken_over > 0, "the killed daemon held jobs");
    env.stop_ok();
}

/// `paddock stop` while a job and an online request run: both are answered (the
/// workers drain) before the daemon exits; the job is done, once.
#[test]
fn a_graceful_stop_lets_running_work_finish() {
    let env = Env::new();
    env.config(&env.worker(
        "fake",
        "workers = 2\njobs_share = 0.5\nrequest_timeout = \"10s\"",
    ));
    env.start_ok();
    let id = enqueue_id(&env, "/v1/jobs/fake", &json!({"op": "sleep", "s": 1.5}));
    wait_state(&env, &id, "running");
    let port = env.port;
    let online = std::thread::spawn(move || {
        crate::harness::call(port, "fake", &json!({"op": "sleep", "s": 1.0}))
    });
    wait_until(Duration::from_secs(10), "both workers busy", || {
        let st = env.status();
        let busy = st["services"][0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "busy")
            .count();
        (busy == 2).then_some(())
    });
    env.stop_ok();
    let r = online.join().unwrap();
    assert_eq!(
        r.code,
        200,
        "the request in flight at the stop: {}",
        r.text()
    );
    env.start_ok();
    let j = job(&env, &id);
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(j["attempts"], 1, "{j}");
    assert_eq!(j["history"].as_array().unwrap().len(), 1, "{j}");
    env.stop_ok();
}

/// Two instances (two ports) pointed at one SQLite file: the second is refused.
#[test]
fn one_sqlite_store_serves_one_instance() {
    let mut env = Env::new();
    let db = env.path().join("shared.db");
    env.instance_extra = format!("store = \"sqlite:{}\"\n", db.display());
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    let other = crate::harness::free_port();
    let out = env.run(&["--port", &other.to_string(), "start"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("in use by another paddock instance"),
        "{out:?}"
    );
    env.stop_ok();
    env.assert_nothing_left();
}

/// The PostgreSQL store survives its connections being cut (a server restart, a
/// failover): it reconnects, and jobs keep flowing.
#[test]
#[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
fn the_postgres_store_reconnects() {
    let backend = Backend::postgres();
    let Backend::Postgres(url, server) = &backend else {
        unreachable!()
    };
    let env = backend.env();
    env.config(&env.worker("fake", "workers = 1\njobs_share = 1.0"));
    env.start_ok();
    let first = enqueue(&env, "/v1/jobs/fake", &json!({"op": "echo", "n": 1}), None);
    wait_state(&env, first.json()["id"].as_str().unwrap(), "done");
    // Cut every connection to this test's database.
    let db = url.rsplit('/').next().unwrap();
    let base = &server.base;
    let out = std::process::Command::new("psql")
        .arg(format!("{base}/postgres"))
        .args([
            "-c",
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
            ),
        ])
        .output()
        .unwrap();
    crate::harness::assert_ran(&out);
    // Enqueues may fail while the store reconnects; then they succeed and run.
    let id = wait_until(
        Duration::from_secs(20),
        "an enqueue after the reconnect",
        || {
            let r = enqueue(&env, "/v1/jobs/fake", &json!({"op": "echo", "n": 2}), None);
            (r.code == 202).then(|| r.json()["id"].as_str().unwrap().to_string())
        },
    );
    wait_state(&env, &id, "done");
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(log.contains("reconnected to"), "{log}");
    env.stop_ok();
}

/// Jobs the pump claimed ahead of its workers are `claimed`, not `running`, and
/// can be cancelled; a cancelled one never runs. Only jobs a worker has are
/// `running`.
pub(crate) fn claimed_ahead(backend: Backend) {
    let env = backend.env();
    let record = recording_service(&env);
    env.start_ok();
    // Every job waits at the gate inside its worker: 2 running, the pump claims
    // some ahead, the rest queued.
    let gate = Gate::shut(&env);
    let ids = enqueue_records(&env, 100, 0.0);
    let by_n: BTreeMap<usize, String> = ids.iter().map(|(id, n)| (*n, id.clone())).collect();
    let (running, claimed) = wait_until(
        Duration::from_secs(30),
        "two jobs running and some claimed ahead",
        || {
            let running = all_jobs(&env, "&state=running");
            let claimed = all_jobs(&env, "&state=claimed");
            (running.len() == 2 && !claimed.is_empty()).then_some((running, claimed))
        },
    );
    // No more than the workers hold are running, however many are claimed.
    assert_eq!(all_jobs(&env, "&state=running").len(), 2);
    assert_eq!(
        all_jobs(&env, "&state=queued").len() + claimed.len() + running.len(),
        100
    );
    for j in &running {
        assert_eq!(j["attempts"], 1, "{j}");
    }
    // A claimed job is cancelled before it runs (a running one is cancelled too:
    // tests/it/job_cancel.rs).
    let victim = claimed.last().unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(job(&env, &victim)["attempts"], 0);
    let c = delete(&env, &format!("/v1/jobs/{victim}"));
    assert_eq!(c.code, 200, "{}", c.text());
    assert_eq!(c.json()["state"], "cancelled");
    drop(gate);
    let jobs = wait_until(Duration::from_secs(60), "every other job done", || {
        let all = all_jobs(&env, "");
        all.iter()
            .all(|j| j["state"] == "done" || j["id"] == victim.as_str())
            .then_some(all)
    });
    assert_eq!(job(&env, &victim)["state"], "cancelled");
    assert_eq!(jobs.iter().filter(|j| j["state"] == "done").count(), 99);
    // The cancelled job never ran; every other ran once.
    let (runs, _) = read_runs(&record);
    let victim_n = ids[&victim];
    assert!(
        !runs.contains_key(&victim_n),
        "cancelled job {victim_n} ran"
    );
    assert_eq!(runs.len(), 99);
    assert!(runs.values().all(|&r| r == 1), "{runs:?}");
    assert_eq!(by_n.len(), 100);
    env.stop_ok();
}

/// Past `job_store_max_size`, enqueues get 507 naming the limit and the size;
/// queued jobs still run; on SQLite, once retention prunes them, the store takes
/// jobs again (PostgreSQL gives the space back at its autovacuum).
pub(crate) fn store_cap(backend: Backend) {
    let mut env = backend.env();
    env.instance_extra
        .push_str("job_store_max_size = \"2MiB\"\n");
    env.config(&env.worker(
        "fake",
        "workers = 1\njobs_share = 1.0\njob_retention = \"1s\"",
    ));
    env.start_ok();
    let body = json!({"op": "echo", "n": 1, "pad": "x".repeat(100_000)});
    let mut accepted = vec![];
    let refused = wait_until(
        Duration::from_secs(60),
        "an enqueue refused with 507",
        || {
            let r = enqueue(&env, "/v1/jobs/fake", &body, None);
            match r.code {
                202 => {
                    accepted.push(r.json()["id"].as_str().unwrap().to_string());
                    None
                }
                507 => Some(r.json()),
                other => panic!("{other}: {}", r.text()),
            }
        },
    );
    assert!(accepted.len() >= 10, "{} accepted", accepted.len());
    if matches!(backend, Backend::Sqlite) {
        // Each enqueue counts between two readings: a burst stops near the limit
        // (2 MiB of 100 KB bodies is 21), not a second's worth of enqueues past it.
        assert!(accepted.len() <= 25, "{} accepted", accepted.len());
    }
    assert_eq!(refused["limit"], 2 << 20, "{refused}");
    assert!(refused["size"].as_u64().unwrap() >= 2 << 20, "{refused}");
    let e = refused["error"].as_str().unwrap();
    assert!(
        e.contains("job_store_max_size") && e.contains("2097152"),
        "{refused}"
    );
    // What was accepted runs: claims and results go on past the limit.
    for id in &accepted {
        let (code, j) = get_json(&env, &format!("/v1/jobs/{id}"));
        // Done jobs may be pruned already (retention 1s): a 404 is fine.
        if code == 200 && j["state"] != "done" {
            wait_state(&env, id, "done");
        }
    }
    // The limit, and what it compares, in stats and metrics.
    let out = env.run(&["jobs", "stats", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["max_bytes"], 2 << 20, "{v}");
    assert!(v["used_bytes"].is_u64(), "{v}");
    assert_eq!(env.metric("paddock_jobs_store_max_bytes"), (2 << 20) as f64);
    let table = env.run(&["jobs", "stats"]);
    assert!(table.stdout.contains("job_store_max_size"), "{table:?}");
    if matches!(backend, Backend::Sqlite) {
        // Pruned, the jobs give their pages back: new jobs are taken again.
        wait_until(
            Duration::from_secs(60),
            "the store to take jobs again",
            || {
                (enqueue(&env, "/v1/jobs/fake", &json!({"op": "echo", "n": 2}), None).code == 202)
                    .then_some(())
            },
        );
    }
    env.stop_ok();
}
