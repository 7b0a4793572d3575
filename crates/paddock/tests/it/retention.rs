//! Retention and the job store's figures: finished jobs older than
//! `job_retention` disappear (a 404 that says they expired) on both stores, queued
//! and running ones never do, the SQLite file shrinks, `paddock jobs stats` and
//! `/metrics` count it all, and enqueues keep their latency while 100,000 rows are
//! pruned.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::harness::{Env, wait_until};
use crate::jobs::{Backend, all_jobs, enqueue_id, get_json};

#[test]
fn finished_jobs_expire_on_sqlite_and_the_file_shrinks() {
    finished_jobs_expire(Backend::Sqlite, 1500);
}

#[test]
#[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
fn finished_jobs_expire_on_postgres() {
    finished_jobs_expire(Backend::postgres(), 600);
}

fn stats(env: &Env) -> Value {
    let out = env.run(&["jobs", "stats", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap()
}

/// The service `fake` in `paddock jobs stats --json`.
fn fake_stats(env: &Env) -> Value {
    let s = stats(env);
    s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["service"] == "fake")
        .cloned()
        .unwrap_or_else(|| panic!("no service fake in {s}"))
}

fn gauge(env: &Env, state: &str) -> f64 {
    env.metric(&format!(
        "paddock_jobs{{service=\"fake\",state=\"{state}\"}}"
    ))
}

fn finished_jobs_expire(backend: Backend, n: usize) {
    let env = backend.env();
    env.config(&env.worker(
        "fake",
        "workers = 1\njobs_share = 1.0\njob_retention = \"2s\"",
    ));
    env.start_ok();
    let sqlite = matches!(backend, Backend::Sqlite);
    let db = env.state_dir().join("jobs.db");
    let size = || {
        ["", "-wal"]
            .iter()
            .map(|s| {
                std::fs::metadata(format!("{}{s}", db.display()))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum::<u64>()
    };
    // Jobs with 2 KiB bodies, all done.
    let pad = "x".repeat(2048);
    let mut done_ids = vec![];
    for i in 0..n {
        let id = enqueue_id(
            &env,
            "/v1/jobs/fake",
            &json!({"op": "echo", "n": i, "pad": pad}),
        );
        if i % 500 == 0 {
            done_ids.push(id);
        }
    }
    // Every job done (the first ones may be pruned already: retention is 2 s).
    let pruned = || env.metric("paddock_jobs_pruned_total{service=\"fake\"}") as usize;
    let mut full = 0;
    wait_until(Duration::from_secs(60), "every job done or pruned", || {
        full = full.max(size());
        (all_jobs(&env, "&state=done").len() + pruned() == n).then_some(())
    });
    // A job that runs long and one queued behind it: they must outlive retention.
    let slow = enqueue_id(&env, "/v1/jobs/fake", &json!({"op": "sleep", "s": 6}));
    let behind = enqueue_id(&env, "/v1/jobs/fake", &json!({"op": "echo", "n": -1}));
    // The finished ones go (within retention plus a pruning round).
    wait_until(Duration::from_secs(15), "the finished jobs pruned", || {
        all_jobs(&env, "&state=done").is_empty().then_some(())
    });
    for id in &done_ids {
        let (code, v) = get_json(&env, &format!("/v1/jobs/{id}"));
        assert_eq!(code, 404, "{v}");
        assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
    }
    let (code, v) = get_json(&env, &format!("/v1/jobs/{slow}"));
    assert_eq!((code, v["state"].as_str()), (200, Some("running")), "{v}");
    let (code, v) = get_json(&env, &format!("/v1/jobs/{behind}"));
    assert_eq!(code, 200, "a queued job was pruned: {v}");

    // The figures: what is left, and what retention removed.
    let s = fake_stats(&env);
    // The slow one is running; the one behind may be claimed already, waiting for
    // the worker.
    let count = |state: &str| s["counts"][state].as_u64().unwrap();
    assert_eq!(count("running"), 1, "{s}");
    assert_eq!(count("claimed") + count("queued"), 1, "{s}");
    assert_eq!(s["counts"]["done"], 0, "{s}");
    assert_eq!(s["retention"], "2s", "{s}");
    assert!(s["oldest_finished"].is_null(), "{s}");
    assert!(s["last_prune"]["at"].is_string(), "{s}");
    let all = stats(&env);
    assert_eq!(
        all["store"],
        if sqlite { "sqlite" } else { "postgres" },
        "{all}"
    );
    assert!(all["bytes"].as_u64().unwrap() > 0, "{all}");
    assert!(
        !all["location"].as_str().unwrap().contains("password"),
        "{all}"
    );
    assert_eq!(pruned(), n);
    assert_eq!(gauge(&env, "running"), 1.0);
    assert_eq!(gauge(&env, "claimed") + gauge(&env, "queued"), 1.0);
    assert_eq!(gauge(&env, "done"), 0.0);
    assert!(env.metric("paddock_jobs_store_bytes") > 0.0);
    assert!(env.metric("paddock_jobs_last_prune_timestamp_seconds{service=\"fake\"}") > 0.0);
    // The table names every column the JSON has.
    let table = env.run(&["jobs", "stats"]);
    assert_eq!(table.code, 0, "{table:?}");
    for word in [
        "SERVICE",
        "QUEUED",
        "CLAIMED",
        "RUNNING",
        "LAST PRUNE",
        "fake",
        "removed",
    ] {
        assert!(
            table.stdout.contains(word),
            "{word} missing: {}",
            table.stdout
        );
    }

    // The job that finishes now is counted, then pruned in its turn.
    wait_until(Duration::from_secs(20), "the slow job done", || {
        (fake_stats(&env)["counts"]["done"].as_u64() >= Some(1) || pruned() > n).then_some(())
    });
    if sqlite {
        // The file gave the space back.
        let small = wait_until(Duration::from_secs(30), "the database to shrink", || {
            let now = size();
            (now < full / 5).then_some(now)
        });
        eprintln!("jobs.db (and its WAL): {full} bytes with {n} done jobs, {small} after pruning");
    }
    // An id that never existed, made now, is simply not found.
    let (code, v) = get_json(&env, "/v1/jobs/jffffffffffff0000000000000000");
    assert_eq!(code, 404);
    assert!(!v["error"].as_str().unwrap().contains("expired"), "{v}");
    env.stop_ok();
}

/// Runs a Python script (`python3 -c SCRIPT ARGS…`), asserting it succeeds; its
/// output, trimmed.
fn python(script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    crate::harness::assert_ran(&out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The 99th percentile of `v` (sorted in place).
fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// 100,000 finished jobs, made old by hand, are pruned while four clients enqueue:
/// the 99th percentile of enqueue latency during the prune (and its compaction)
/// stays within twice that outside it.
#[test]
fn enqueues_keep_their_latency_while_100k_jobs_are_pruned() {
    const ROWS: usize = 100_000;
    let env = Env::new();
    // First run: the schema. Then 100,000 done jobs that finished an hour ago.
    env.config(&env.worker("fake", "workers = 1\njobs_share = 1.0"));
    env.start_ok();
    env.stop_ok();
    let db = env.state_dir().join("jobs.db");
    let seed = format!(
        r#"
import sqlite3, time
db = sqlite3.connect({db:?})
old = int(time.time() * 1000) - 3600_000
body = b'{{"op": "echo", "pad": "' + b'x' * 180 + b'"}}'
rows = (("j%011x%016x" % (old, i), "fake", "predict", "application/json", body, "done", 3,
         old, old, old, old, b'{{"ok": true}}', "application/json") for i in range({ROWS}))
db.executemany("INSERT INTO jobs (id, service, method, content_type, body, state, max_attempts, "
               "created_ms, started_ms, finished_ms, run_after_ms, result, result_content_type) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
db.commit()
print(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
"#,
        db = db.display().to_string()
    );
    assert_eq!(python(&seed, &[]), ROWS.to_string());
    // Retention 20s: the first prune round comes 5 s after the start, so the
    // clients see the store before, during and after it.
    env.config(&env.worker(
        "fake",
        "workers = 1\njobs_share = 1.0\njob_retention = \"20s\"",
    ));
    env.start_ok();
    let port = env.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = vec![];
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = json!({"op": "echo", "c": c, "i": i}).to_string();
                    let (at, t) = (SystemTime::now(), Instant::now());
                    let r = crate::harness::post(
                        port,
                        "/v1/jobs/fake",
                        "application/json",
                        body.as_bytes(),
                    )
                    .unwrap();
                    assert_eq!(r.code, 202, "{}", r.text());
                    seen.push((
                        unix_ms(at),
                        unix_ms(SystemTime::now()),
                        t.elapsed().as_secs_f64() * 1e3,
                    ));
                    i += 1;
                }
                seen
            })
        })
        .collect();
    let pruned = wait_until(Duration::from_secs(120), "the 100,000 jobs pruned", || {
        let s = fake_stats(&env);
        let p = &s["last_prune"];
        (p["removed"].as_u64() >= Some(ROWS as u64)).then(|| p.clone())
    });
    // As long again after the prune as before it, for the baseline.
    let after_end = Instant::now() + Duration::from_secs(3);
    wait_until(
        Duration::from_secs(10),
        "a baseline after the prune",
        || (Instant::now() >= after_end).then_some(()),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen: Vec<(i64, i64, f64)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    // The prune (and its compaction) ended at `at` and took `took_ms`: its window,
    // from the store's own report.
    let last = rfc3339_ms(pruned["at"].as_str().unwrap());
    let took = pruned["took_ms"].as_i64().unwrap();
    let (window_start, window_end) = (last - took, last);
    let (mut during, mut outside): (Vec<f64>, Vec<f64>) = (vec![], vec![]);
    for (start, end, ms) in &seen {
        if *end >= window_start && *start <= window_end {
            during.push(*ms);
        } else {
            outside.push(*ms);
        }
    }
    let (n_during, n_outside) = (during.len(), outside.len());
    let (p_during, p_outside) = (p99(&mut during), p99(&mut outside));
    eprintln!(
        "prune of {ROWS} rows took {took} ms; enqueue p99 {p_during:.2} ms during it ({n_during} requests), {p_outside:.2} ms outside it ({n_outside})"
    );
    assert!(
        n_during >= 200 && n_outside >= 200,
        "too few samples: {n_during} during, {n_outside} outside"
    );
    assert!(
        p_during <= 2.0 * p_outside,
        "enqueue p99 under the prune {p_during:.2} ms is more than twice {p_outside:.2} ms without"
    );
    let s = fake_stats(&env);
    assert!(s["counts"]["done"].as_u64().unwrap() < ROWS as u64, "{s}");
    env.stop_ok();
}

/// `2026-12-02T19:44:18.123Z` as milliseconds since the epoch.
fn rfc3339_ms(s: &str) -> i64 {
    let (date, time) = s.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, ms) = time.split_once('.').unwrap();
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    days_from_civil(d[0], d[1], d[2]) * 86_400_000
        + t[0] * 3_600_000
        + t[1] * 60_000
        + t[2] * 1000
        + ms.parse::<i64>().unwrap()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A database made before retention (auto_vacuum off) keeps the space of deleted
/// jobs until `paddock jobs compact` runs, which refuses while the daemon runs.
#[test]
fn jobs_compact_gives_an_old_database_its_space_back() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1\njobs_share = 1.0"));
    env.start_ok();
    let pad = "x".repeat(4096);
    for i in 0..300 {
        enqueue_id(
            &env,
            "/v1/jobs/fake",
            &json!({"op": "echo", "n": i, "pad": pad}),
        );
    }
    let out = env.run(&["jobs", "compact"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("stop it first"), "{out:?}");
    env.stop_ok();
    // Made "old": auto_vacuum off, and its jobs deleted by hand; the file keeps
    // their pages.
    let db = env.state_dir().join("jobs.db");
    let path = db.display().to_string();
    let sql = |script: &str| python(script, &[&path]);
    sql(
        "import sqlite3, sys\ndb = sqlite3.connect(sys.argv[1])\ndb.execute('PRAGMA auto_vacuum = NONE')\ndb.execute('VACUUM')\ndb.execute('DELETE FROM jobs')\ndb.commit()\ndb.execute('PRAGMA wal_checkpoint(TRUNCATE)')",
    );
    let auto = "import sqlite3, sys\nprint(sqlite3.connect(sys.argv[1]).execute('PRAGMA auto_vacuum').fetchone()[0])";
    assert_eq!(sql(auto), "0");
    let out = env.run(&["jobs", "compact", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let (before, after) = (
        v["bytes_before"].as_u64().unwrap(),
        v["bytes_after"].as_u64().unwrap(),
    );
    assert!(before > 1_000_000, "{v}");
    assert!(after < before / 10, "{v}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), after, "{v}");
    // From now on the file shrinks after each prune.
    assert_eq!(sql(auto), "2");
    env.start_ok();
    env.stop_ok();
}
