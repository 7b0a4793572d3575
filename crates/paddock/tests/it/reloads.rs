//! Reloads that fail explain themselves, and every spawn gets its own generation.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Env, call, kill, wait_until};

fn worker0(env: &Env) -> Value {
    env.status()["services"][0]["workers"][0].clone()
}

#[test]
fn a_failed_reload_says_what_happened_and_generations_stay_unique() {
    let env = Env::new();
    let gate = env.path().join("broken");
    let gate_s = gate.display().to_string();
    env.config(&env.worker_with(
        "fake",
        "fake_worker.py",
        &[("FAKE_EXIT_IF_EXISTS", &gate_s)],
        "workers = 1\nbackoff_initial = \"50ms\"",
    ));
    env.start_ok();
    let old = worker0(&env);
    assert_eq!(old["generation"], 1);
    std::fs::write(&gate, "").unwrap();
    let out = env.run(&["reload"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("failed before it was ready: exited with status 1"),
        "{out:?}"
    );
    assert!(out.stderr.contains("generation 2"), "{out:?}");
    assert!(out.stderr.contains("old worker keeps serving"), "{out:?}");
    // The replacement's own last lines, as `start` shows them.
    assert!(out.stderr.contains("refusing to start"), "{out:?}");
    assert!(!out.stderr.contains("restarting in"), "{out:?}");
    // Tried once, not retried behind the operator's back.
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert_eq!(log.matches("generation=2").count(), 1, "{log}");
    assert!(!log.contains("generation=3"), "{log}");
    // The old worker still serves.
    assert_eq!(
        call(env.port, "fake", &json!({"op": "echo", "n": 1})).code,
        200
    );
    assert_eq!(worker0(&env)["pid"], old["pid"]);

    // The next process of the slot is generation 3: 2 was the failed replacement's.
    std::fs::remove_file(&gate).unwrap();
    kill(old["pid"].as_i64().unwrap() as i32, 9);
    let w = wait_until(Duration::from_secs(15), "the respawn", || {
        let w = worker0(&env);
        (w["state"] == "ready" && w["pid"] != old["pid"]).then_some(w)
    });
    assert_eq!(w["generation"], 3, "{w}");
    env.stop_ok();
    env.assert_nothing_left();
}

/// A single-writer resource (as ChromaDB's PersistentClient or a SQLite file): the
/// default reload cannot open it twice; `reload = "stop-first"` can.
#[test]
fn stop_first_reloads_what_cannot_be_open_twice() {
    for (strategy, ok) in [("start-first", false), ("stop-first", true)] {
        let env = Env::new();
        let db = env.path().join("db-{worker}");
        let db_s = db.display().to_string();
        env.config(&env.worker_with(
            "fake",
            "fake_worker.py",
            &[("FAKE_EXCLUSIVE", &db_s)],
            &format!("workers = 2\nreload = \"{strategy}\""),
        ));
        env.start_ok();
        // {worker}: one file per worker, so the two workers never collide.
        assert!(env.path().join("db-0").exists() && env.path().join("db-1").exists());
        let before: Vec<Value> = env.status()["services"][0]["workers"]
            .as_array()
            .unwrap()
            .clone();
        let out = env.run(&["reload"]);
        if ok {
            assert_eq!(out.code, 0, "{strategy}: {out:?}");
            let after = env.status();
            for (i, w) in after["services"][0]["workers"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                assert_ne!(w["pid"], before[i]["pid"], "{strategy}: {after}");
                assert_eq!(w["state"], "ready", "{after}");
            }
        } else {
            assert_eq!(out.code, 1, "{strategy}: {out:?}");
            assert!(
                out.stderr.contains("already open in another process"),
                "{out:?}"
            );
        }
        assert_eq!(
            call(env.port, "fake", &json!({"op": "echo", "n": 1})).code,
            200
        );
        env.stop_ok();
        env.assert_nothing_left();
    }
}

#[test]
fn start_stagger_spaces_the_first_spawns() {
    let env = Env::new();
    let pidfile = env.path().join("pid-{worker}");
    let p = pidfile.display().to_string();
    env.config(&env.worker_with(
        "fake",
        "fake_worker.py",
        &[("FAKE_PIDFILE", &p)],
        "workers = 2\nstart_stagger = \"1s\"",
    ));
    env.start_ok();
    let t0 = std::fs::metadata(env.path().join("pid-0"))
        .unwrap()
        .modified()
        .unwrap();
    let t1 = std::fs::metadata(env.path().join("pid-1"))
        .unwrap()
        .modified()
        .unwrap();
    let gap = t1.duration_since(t0).unwrap();
    assert!(gap >= Duration::from_millis(900), "{gap:?}");
    env.stop_ok();
}
