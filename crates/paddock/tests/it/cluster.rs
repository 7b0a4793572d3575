//! Several daemons on one PostgreSQL, through the faults a cluster has: a daemon
//! SIGKILLed, the server restarted, a daemon paused past its lease, the server's
//! connection limit. The restart and the limit use a server of the test's own
//! (`PgServer::own`), never the one the other tests share.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Env, PgServer, kill, wait_until};
use crate::jobs::{Backend, check_at_least_once, read_runs, recording_service};

/// The pid of the daemon listening on `port` (from its lock).
fn daemon_on(env: &Env, port: u16) -> i32 {
    let lock = env.path().join(format!("state/t-{port}/lock"));
    let info: Value = serde_json::from_str(&std::fs::read_to_string(lock).unwrap()).unwrap();
    info["pid"].as_i64().unwrap() as i32
}

fn start_on(env: &Env, port: u16) {
    let out = env.run(&["--port", &port.to_string(), "start"]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// Three daemons of `env`'s config: on its port and two more.
fn start_three(env: &Env) -> [u16; 3] {
    let ports = [
        env.port,
        crate::harness::free_port(),
        crate::harness::free_port(),
    ];
    for &p in &ports {
        start_on(env, p);
    }
    ports
}

fn stop_on(env: &Env, port: u16) {
    let out = env.run(&["--port", &port.to_string(), "stop"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
#[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
fn three_daemons_each_sigkilled_in_turn_lose_no_acknowledged_job() {
    let backend = Backend::postgres();
    let env = backend.env();
    let record = recording_service(&env);
    let ports = start_three(&env);
    const N: usize = 20_000;
    let enqueueing = enqueue_anywhere(ports, N, 0.001);
    for (k, &port) in ports.iter().enumerate() {
        // Each daemon killed while jobs run, a quarter of the way further each time.
        let threshold = (k + 1) * N / 4;
        wait_until(
            Duration::from_secs(120),
            "jobs done before the kill",
            || (read_runs_count(&record) >= threshold).then_some(()),
        );
        let pid = daemon_on(&env, port);
        kill(pid, 9);
        wait_until(Duration::from_secs(10), "the daemon gone", || {
            (!crate::harness::alive(pid)).then_some(())
        });
        eprintln!(
            "daemon on port {port} (pid {pid}) SIGKILLed after {} runs",
            read_runs_count(&record)
        );
        start_on(&env, port);
    }
    let ids = enqueueing.join().unwrap();
    assert_eq!(ids.len(), N);
    let twice = check_at_least_once(&env, &record, &ids);
    eprintln!(
        "{twice} of {N} jobs ran twice: they were running on a killed daemon (at-least-once)"
    );
    for &p in &ports {
        stop_on(&env, p);
    }
    env.assert_nothing_left();
}

/// Enqueues `n` record jobs from 8 threads, job i first to daemon `i % 3`; when a
/// daemon is down (killed, restarting), the same job (the same Idempotency-Key)
/// goes to the next, as a client of a cluster does. Returns id -> n of the jobs
/// acknowledged.
fn enqueue_anywhere(
    ports: [u16; 3],
    n: usize,
    seconds: f64,
) -> std::thread::JoinHandle<BTreeMap<String, usize>> {
    std::thread::spawn(move || {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut out = vec![];
                    for i in (t..n).step_by(8) {
                        let body = json!({"op": "record", "n": i, "s": seconds}).to_string();
                        let headers = format!("Idempotency-Key: job-{i}\r\n");
                        let deadline = Instant::now() + Duration::from_secs(60);
                        let mut k = i;
                        let id = loop {
                            let port = ports[k % 3];
                            match crate::harness::post_with_headers(
                                port,
                                "/v1/jobs/fake",
                                "application/json",
                                &headers,
                                body.as_bytes(),
                            ) {
                                Ok(r) if r.code == 202 || r.code == 200 => {
                                    break r.json()["id"].as_str().unwrap().to_string();
                                }
                                Ok(r) if r.code == 503 => {}
                                Ok(r) => panic!("enqueue {i}: {} {}", r.code, r.text()),
                                Err(_) => {} // that daemon is down: the next one
                            }
                            assert!(Instant::now() < deadline, "job {i} was never acknowledged");
                            k += 1;
                        };
                        out.push((id, i));
                    }
                    out
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn read_runs_count(record: &str) -> usize {
    std::fs::read_to_string(record)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
#[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
fn a_postgres_restart_is_ridden_out_and_enqueues_meanwhile_get_503_at_once() {
    let pg = PgServer::own("");
    let mut env = Env::new();
    env.instance_extra = format!("store = {:?}\nlease_timeout = \"2s\"\n", pg.database());
    let record = recording_service(&env);
    env.start_ok();
    // Jobs stream in while the server restarts: each is acknowledged (and then
    // must run) or refused with 503 and Retry-After, in under a second.
    let port = env.port;
    let streaming = std::thread::spawn(move || {
        let mut acked = BTreeMap::new();
        let mut refused = 0;
        for i in 0..600 {
            let body = json!({"op": "record", "n": i, "s": 0.002}).to_string();
            let t0 = Instant::now();
            let r =
                crate::harness::post(port, "/v1/jobs/fake", "application/json", body.as_bytes())
                    .unwrap();
            let took = t0.elapsed();
            match r.code {
                202 => {
                    acked.insert(r.json()["id"].as_str().unwrap().to_string(), i);
                }
                503 => {
                    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
                    assert!(took < Duration::from_secs(1), "a refusal took {took:?}");
                    refused += 1;
                }
                c => panic!("enqueue {i}: {c} {}", r.text()),
            }
        }
        (acked, refused)
    });
    wait_until(Duration::from_secs(30), "some jobs done", || {
        (read_runs_count(&record) >= 50).then_some(())
    });
    pg.ctl(&["restart", "-m", "fast"]);
    let (mut acked, refused) = streaming.join().unwrap();
    eprintln!(
        "during the restart: {} acknowledged, {refused} refused with 503",
        acked.len()
    );

    // Down for a while: enqueues are refused at once, and status and the log say why.
    pg.ctl(&["stop", "-m", "fast"]);
    let t0 = Instant::now();
    let r = crate::jobs::enqueue(
        &env,
        "/v1/jobs/fake",
        &json!({"op": "record", "n": 10_000, "s": 0}),
        None,
    );
    assert_eq!(r.code, 503, "{}", r.text());
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("unreachable"), "{}", r.text());
    let outage = wait_until(Duration::from_secs(5), "the outage in status", || {
        env.status()["instance"]["job_store_outage"]
            .as_str()
            .map(String::from)
    });
    assert!(outage.contains("reconnect attempt"), "{outage}");
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(log.contains("unreachable since"), "{log}");

    // Back: work resumes without a daemon restart, and nothing acknowledged is lost.
    pg.ctl(&["start"]);
    let id = wait_until(Duration::from_secs(30), "an enqueue accepted again", || {
        let r = crate::jobs::enqueue(
            &env,
            "/v1/jobs/fake",
            &json!({"op": "record", "n": 20_000, "s": 0}),
            None,
        );
        (r.code == 202).then(|| r.json()["id"].as_str().unwrap().to_string())
    });
    acked.insert(id, 20_000);
    let twice = check_at_least_once(&env, &record, &acked);
    eprintln!("{twice} jobs ran twice");
    assert!(env.status()["instance"]["job_store_outage"].is_null());
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(log.contains("reconnected to"), "{log}");
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
#[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
fn a_daemon_paused_past_its_lease_loses_its_job_and_its_late_result_is_dropped() {
    let backend = Backend::postgres();
    let env = backend.env(); // lease_timeout = "1s"
    let record = recording_service(&env);
    let port_b = crate::harness::free_port();
    env.start_ok();
    start_on(&env, port_b);
    let id = crate::jobs::enqueue_id(
        &env,
        "/v1/jobs/fake",
        &json!({"op": "record", "n": 1, "s": 3}),
    );
    let running = wait_until(Duration::from_secs(10), "the job running", || {
        let j = crate::jobs::job(&env, &id);
        (j["state"] == "running").then_some(j)
    });
    let owner = running["owner"].as_str().unwrap().to_string();
    let (paused, other) = if owner.contains(&format!(":{}@", daemon_on(&env, env.port))) {
        (env.port, port_b)
    } else {
        (port_b, env.port)
    };
    let pid = daemon_on(&env, paused);
    kill(pid, paddock_sys::signal::SIGSTOP);
    // Asked of the daemon that runs (the paused one answers nothing).
    let on = |port: u16, path: &str| -> Value {
        let (code, body) = crate::harness::http_get(port, path).expect("the other daemon answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    // The other daemon takes the job over once the lease expired, and runs it.
    let done = wait_until(
        Duration::from_secs(30),
        "the job done by the other daemon",
        || {
            let j = on(other, &format!("/v1/jobs/{id}"));
            (j["state"] == "done").then_some(j)
        },
    );
    assert_taken_over(&done);
    let result = on(other, &format!("/v1/jobs/{id}/result"));
    let winner = result["pid"].as_i64().unwrap();
    // Continued, the paused daemon reports its worker's result: refused, and said so.
    kill(pid, paddock_sys::signal::SIGCONT);
    let log_path = env.path().join(format!("state/t-{paused}/daemon.log"));
    wait_until(
        Duration::from_secs(20),
        "the late result refused in the log",
        || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            log.contains(&format!("job {id} is no longer running here"))
                .then_some(())
        },
    );
    let after = on(other, &format!("/v1/jobs/{id}/result"));
    assert_eq!(
        after["pid"].as_i64().unwrap(),
        winner,
        "the final result is the new attempt's"
    );
    let (runs, _) = read_runs(&record);
    assert_eq!(runs[&1], 2, "both attempts ran (at-least-once)");
    stop_on(&env, other);
    stop_on(&env, paused);
}

#[test]
#[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
fn three_daemons_fit_twenty_connections_and_a_full_server_is_named_not_waited_on() {
    let pg = PgServer::own("-c max_connections=20");
    let url = pg.database();
    let mut env = Env::new();
    env.instance_extra = format!("store = {url:?}\n");
    env.config(&env.worker("fake", "workers = 1\njobs_share = 1.0"));
    let ports = start_three(&env);
    let id = crate::jobs::enqueue_id(&env, "/v1/jobs/fake", &json!({"op": "echo", "n": 1}));
    let (code, v) = crate::jobs::get_json(&env, &format!("/v1/jobs/{id}?wait=20s"));
    assert_eq!((code, v["state"].as_str()), (200, Some("done")), "{v}");
    // Fill the rest of the server's slots, then one more daemon: it fails at once,
    // naming the limit.
    // Free slots, as the server counts them (the asking connection included).
    let free = || -> i64 {
        let out = std::process::Command::new("psql")
            .arg(&url)
            .args([
                "-tAc",
                "SELECT current_setting('max_connections')::int - count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let mut holders = vec![];
    let mut left = free();
    assert!(left > 1, "{left}");
    while left > 1 {
        holders.push(
            std::process::Command::new("psql")
                .arg(&url)
                .args(["-qc", "SELECT pg_sleep(120)"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        left = wait_until(Duration::from_secs(10), "the holder connected", || {
            let now = free();
            (now < left).then_some(now)
        });
    }
    let t0 = Instant::now();
    let port = crate::harness::free_port();
    let out = env.run(&["--port", &port.to_string(), "start"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.all().contains("max_connections"), "{out:?}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    for mut h in holders {
        let _ = h.kill();
        let _ = h.wait();
    }
    for &p in &ports {
        stop_on(&env, p);
    }
    env.assert_nothing_left();
}

/// `job`'s history says another daemon took it over when its lease expired.
fn assert_taken_over(job: &Value) {
    let history = job["history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|h| h["outcome"] == "interrupted" && h["cause"]["kind"] == "lease_expired"),
        "{job}"
    );
}

/// The pids of the workers that started a `hold` attempt in `dir` (see the fake
/// worker's `hold` op).
fn holding(dir: &std::path::Path) -> BTreeSet<i64> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            name.strip_suffix(".started").map(|p| p.parse().unwrap())
        })
        .collect()
}

/// Lets the `hold` attempt of worker `pid` answer: opens and closes its FIFO (an
/// open for writing returns once the worker has it open for reading).
fn let_go(dir: &std::path::Path, pid: i64) {
    let fifo = dir.join(format!("{pid}.go"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::write(&fifo, b""));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("worker {pid} never opened its FIFO"))
        .unwrap();
}

#[test]
#[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
fn a_late_result_is_fenced_by_its_claim_even_once_the_same_daemon_claimed_the_job_again() {
    // Daemon P runs the job (claim 1) and is paused past its lease; Q takes it over
    // (claim 2) and its attempt fails; P, continued, claims it again (claim 3) on
    // its other worker while the first attempt still runs. Owner alone cannot tell
    // the two attempts apart: the first attempt's result must be refused by its
    // claim, and the job's result must be the new attempt's.
    let backend = Backend::postgres();
    let env = backend.env(); // lease_timeout = "1s"
    env.config(&env.worker_with(
        "fake",
        "fake_worker.py",
        &[],
        "workers = 2\njobs_share = 1.0\nrequest_timeout = \"120s\"\njob_backoff = \"3s\"\nmax_attempts = 5",
    ));
    let held = env.path().join("held");
    std::fs::create_dir(&held).unwrap();
    let body = json!({"op": "hold", "dir": held.display().to_string()});
    env.start_ok();
    let p = daemon_on(&env, env.port);
    let id = crate::jobs::enqueue_id(&env, "/v1/jobs/fake", &body);
    let first = wait_until(Duration::from_secs(20), "P's first attempt started", || {
        let pids = holding(&held);
        (pids.len() == 1).then(|| *pids.first().unwrap())
    });
    // Its start is committed a moment after the worker has the job.
    crate::jobs::wait_state(&env, &id, "running");
    kill(p, paddock_sys::signal::SIGSTOP);

    // Q takes the job over once P's lease expired; its attempt fails.
    std::fs::write(held.join("fail"), b"").unwrap();
    let port_q = crate::harness::free_port();
    start_on(&env, port_q);
    let on = |port: u16, path: &str| -> Value {
        let (code, body) = crate::harness::http_get(port, path).expect("the daemon answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let failed = wait_until(Duration::from_secs(30), "Q's attempt failed", || {
        let j = on(port_q, &format!("/v1/jobs/{id}"));
        (j["failures"] == 1).then_some(j)
    });
    assert_taken_over(&failed);
    assert_eq!(failed["state"], "queued", "{failed}");
    stop_on(&env, port_q);
    std::fs::remove_file(held.join("fail")).unwrap();

    // P, continued, claims the job again after the backoff: its other worker runs it.
    kill(p, paddock_sys::signal::SIGCONT);
    let again = wait_until(Duration::from_secs(30), "P's new attempt started", || {
        let pids = holding(&held);
        (pids.len() == 2).then(|| *pids.iter().find(|&&x| x != first).unwrap())
    });
    let running = crate::jobs::wait_state(&env, &id, "running");
    assert!(
        running["owner"]
            .as_str()
            .unwrap()
            .contains(&format!(":{p}@")),
        "{running}"
    );

    // The first attempt answers now: its result belongs to claim 1 and is dropped.
    let_go(&held, first);
    let log_path = env.state_dir().join("daemon.log");
    wait_until(
        Duration::from_secs(20),
        "the late result refused in P's log",
        || {
            let j = crate::jobs::job(&env, &id);
            assert_eq!(j["state"], "running", "the late result was recorded: {j}");
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            log.contains(&format!("job {id} is no longer running here under claim 1"))
                .then_some(())
        },
    );
    let still = crate::jobs::job(&env, &id);
    assert_eq!(
        still["state"], "running",
        "the late result was recorded: {still}"
    );

    // The new attempt's result is the job's.
    let_go(&held, again);
    let (code, done) = crate::jobs::get_json(&env, &format!("/v1/jobs/{id}?wait=20s"));
    assert_eq!(
        (code, done["state"].as_str()),
        (200, Some("done")),
        "{done}"
    );
    let result = on(env.port, &format!("/v1/jobs/{id}/result"));
    assert_eq!(result["pid"].as_i64(), Some(again), "{result}");
    let outcomes: Vec<&str> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.first().copied(),
        Some("interrupted"),
        "{outcomes:?}"
    );
    assert!(outcomes.contains(&"failed"), "{outcomes:?}");
    assert_eq!(outcomes.last().copied(), Some("done"), "{outcomes:?}");
    assert_eq!(
        outcomes.iter().filter(|o| **o == "done").count(),
        1,
        "{outcomes:?}"
    );
    env.stop_ok();
    env.assert_nothing_left();
}
