//! Periodic jobs (`[[services.NAME.schedule]]`): one job per tick, shown by `check`
//! and `status` with the next run; missed ticks skipped or run once after downtime;
//! each tick enqueued exactly once by several daemons on one PostgreSQL store.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Env, wait_until};
use crate::jobs::{Backend, all_jobs};

fn schedule_config(env: &Env, missed: &str) {
    env.config(&format!(
        "{}\n[[services.fake.schedule]]\nname = \"tick\"\ncron = \"* * * * * *\"\nhandler = \"echo\"\nbody = {{ n = 7 }}\nmissed = \"{missed}\"\n",
        env.worker("fake", "workers = 1")
    ));
}

/// Tick → job lines of every daemon log under this environment's state folder.
fn ticks(env: &Env) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for dir in std::fs::read_dir(env.path().join("state"))
        .unwrap()
        .flatten()
    {
        let Ok(log) = std::fs::read_to_string(dir.path().join("daemon.log")) else {
            continue;
        };
        for line in log.lines() {
            if let Some(rest) = line.split("schedule fake/tick: tick ").nth(1)
                && let Some((tick, job)) = rest.split_once(" enqueued job ")
            {
                out.entry(tick.to_string())
                    .or_default()
                    .push(job.trim().to_string());
            }
        }
    }
    out
}

fn one_job_per_tick_and_missed_ticks(backend: Backend) {
    let env = backend.env();
    schedule_config(&env, "once");
    let out = env.run(&["check", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let sc = &v["services"][0]["schedules"][0];
    assert_eq!(sc["name"], "tick", "{v}");
    assert!(sc["next_run"].as_str().is_some(), "{v}");
    env.start_ok();
    let st = env.status();
    assert_eq!(
        st["services"][0]["schedules"][0]["cron"], "* * * * * *",
        "{st}"
    );
    assert!(
        env.run(&["status"])
            .stdout
            .contains("schedule tick (* * * * * *, handler echo): next run")
    );
    let jobs = wait_until(Duration::from_secs(30), "three ticks done", || {
        let done = all_jobs(&env, "&state=done");
        (done.len() >= 3).then_some(done)
    });
    for j in &jobs {
        assert_eq!(j["method"], "echo", "{j}");
    }
    let (code, body) = crate::harness::http_get(
        env.port,
        &format!("/v1/jobs/{}/result", jobs[0]["id"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["n"], 7);
    env.stop_ok();
    let before = ticks(&env);
    assert!(before.values().all(|jobs| jobs.len() == 1), "{before:?}");

    // Two seconds down: two ticks missed. `once` enqueues one of them at start.
    std::thread::sleep(Duration::from_secs(2)); // the downtime is the scenario
    env.start_ok();
    wait_until(Duration::from_secs(20), "a tick after the restart", || {
        (ticks(&env).len() > before.len() + 1).then_some(())
    });
    env.stop_ok();
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert_eq!(
        log.matches("was missed (missed = \"once\"): enqueued now")
            .count(),
        1,
        "{log}"
    );
    // `skip`: nothing is made up after the next downtime.
    schedule_config(&env, "skip");
    std::thread::sleep(Duration::from_secs(2)); // the downtime is the scenario
    env.start_ok();
    env.stop_ok();
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert_eq!(log.matches("was missed").count(), 1, "skip made up a tick");
    let after = ticks(&env);
    assert!(after.values().all(|jobs| jobs.len() == 1), "{after:?}");
}

mod sqlite {
    #[test]
    fn one_job_per_tick_and_missed_ticks() {
        super::one_job_per_tick_and_missed_ticks(super::Backend::Sqlite)
    }
}

mod postgres {
    use super::*;

    #[test]
    #[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
    fn one_job_per_tick_and_missed_ticks() {
        super::one_job_per_tick_and_missed_ticks(super::Backend::postgres())
    }

    /// Two daemons with the same one-second schedule on one PostgreSQL store, for
    /// at least five ticks: each tick enqueued exactly once.
    #[test]
    #[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
    fn two_daemons_enqueue_each_tick_once() {
        let backend = Backend::postgres();
        let env = backend.env();
        schedule_config(&env, "skip");
        env.start_ok();
        let port_b = crate::harness::free_port().to_string();
        let out = env.run(&["--port", &port_b, "start"]);
        assert_eq!(out.code, 0, "{out:?}");
        let seen = wait_until(Duration::from_secs(30), "six ticks", || {
            let t = ticks(&env);
            (t.len() >= 6).then_some(t)
        });
        assert_eq!(env.run(&["--port", &port_b, "stop"]).code, 0);
        env.stop_ok();
        let seen_after = ticks(&env);
        assert!(seen_after.len() >= seen.len());
        for (tick, jobs) in &seen_after {
            assert_eq!(
                jobs.len(),
                1,
                "tick {tick} was enqueued {} times: {jobs:?}",
                jobs.len()
            );
        }
        // The store holds one job per tick, whichever daemon enqueued it.
        let jobs = all_jobs_of(&backend);
        assert_eq!(jobs, seen_after.len(), "one job per tick in the store");
    }

    /// Jobs in the store of `backend` (through psql: the daemons are stopped).
    fn all_jobs_of(backend: &Backend) -> usize {
        let Backend::Postgres(url, _) = backend else {
            unreachable!()
        };
        let out = std::process::Command::new("psql")
            .arg(url)
            .args(["-tAc", "SELECT count(*) FROM paddock_jobs"])
            .output()
            .unwrap();
        crate::harness::assert_ran(&out);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}
