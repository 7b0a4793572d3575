//! Job stores written by the release before job schema version 2 are upgraded in
//! place at start (one transaction, a line in the log) and keep every job; a store
//! newer than this build is refused, naming both versions.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Env, fixture, wait_until};
use crate::jobs::{Backend, all_jobs, job};

/// The jobs the fixtures hold (see tests/fixtures/stores/README.md), by state.
fn states(env: &Env) -> Vec<(String, String)> {
    all_jobs(env, "")
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap().to_string(),
                j["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn env_for(store: &str) -> Env {
    let mut env = Env::new();
    env.instance_extra = format!("store = {store:?}\n");
    env.config(&env.worker("fake", "workers = 1"));
    env
}

/// After the upgrade: the old jobs kept (the finished ones as they were, the queued
/// ones run), the log says so, and the new columns work.
fn check_upgraded(env: &Env, before: usize) {
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(
        log.contains("schema upgraded from version 1 to 4"),
        "no upgrade line in the log:\n{log}"
    );
    let jobs = wait_until(Duration::from_secs(60), "the old queued jobs run", || {
        let s = states(env);
        s.iter()
            .all(|(_, st)| st == "done" || st == "dead")
            .then_some(s)
    });
    assert_eq!(jobs.len(), before, "{jobs:?}");
    assert_eq!(
        jobs.iter().filter(|(_, s)| s == "dead").count(),
        1,
        "{jobs:?}"
    );
    // The first job kept its history and its Idempotency-Key.
    let first = job(env, &jobs[0].0);
    assert_eq!(first["idempotency_key"], "v1-done", "{first}");
    assert_eq!(first["priority"], 0);
    let r = crate::harness::post(
        env.port,
        "/v1/jobs/fake?priority=3&delay=0.2",
        "application/json",
        br#"{"op": "echo", "n": 9}"#,
    )
    .unwrap();
    assert_eq!(r.code, 202, "{}", r.text());
    assert_eq!(r.json()["state"], "scheduled");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let (_, body) = crate::harness::http_get(env.port, &format!("/v1/jobs/{id}?wait=30s")).unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["priority"], 3, "{v}");
}

/// `start` on a store at schema version 99 fails, naming both versions.
fn refused_as_newer(env: &Env) {
    let out = env.run(&["start"]);
    assert_ne!(out.code, 0, "{out:?}");
    let all = out.all();
    assert!(all.contains("schema version 99"), "{all}");
    assert!(all.contains("(version 4)"), "{all}");
    env.assert_nothing_left_now();
}

#[test]
fn a_sqlite_store_of_the_previous_release_is_upgraded_in_place() {
    let probe = Env::new();
    let db = probe.path().join("jobs.db");
    std::fs::copy(fixture("stores/v1-jobs.db"), &db).unwrap();
    let env = env_for(&format!("sqlite:{}", db.display()));
    env.start_ok();
    check_upgraded(&env, 4);
    env.stop_ok();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4);
    // A store a newer paddock upgraded is refused, naming both versions.
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    refused_as_newer(&env);
}

#[test]
#[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
fn a_postgres_store_of_the_previous_release_is_upgraded_in_place() {
    let Backend::Postgres(url, _server) = Backend::postgres() else {
        unreachable!()
    };
    let psql = |args: &[&str]| {
        let out = std::process::Command::new("psql")
            .arg(&url)
            .args(["-q", "-v", "ON_ERROR_STOP=1"])
            .args(args)
            .output()
            .unwrap();
        crate::harness::assert_ran(&out);
    };
    psql(&["-f", &fixture("stores/v1-postgres.sql")]);
    let env = env_for(&url);
    env.start_ok();
    check_upgraded(&env, 4);
    env.stop_ok();
    psql(&["-c", "UPDATE paddock_schema SET version = 99"]);
    refused_as_newer(&env);
}
