//! Models on demand: services that unload when idle and load on the first request,
//! workers that follow the load, and several models in one memory budget. The fake
//! worker holds a chosen amount of memory (`FAKE_HOLD_MB`), as a model's weights.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Env, alive, call, wait_until};
use crate::jobs::{enqueue_id, get_json};

fn service(env: &Env, name: &str) -> Value {
    env.status()["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap()
}

fn spawns(env: &Env, file: &str) -> Vec<i32> {
    std::fs::read_to_string(env.path().join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn pid_of(r: &crate::harness::Resp) -> i32 {
    r.json()["pid"].as_i64().unwrap() as i32
}

/// Configures service "m", the fake worker with `vars` (each spawn's pid appended
/// to the file `pids`, see [`spawns`]) and `settings`.
fn model_m(env: &Env, vars: &[(&str, &str)], settings: &str) {
    let pids = env.path().join("pids").display().to_string();
    let mut all = vec![("FAKE_PIDFILE", pids.as_str())];
    all.extend_from_slice(vars);
    env.config(&env.worker_with("m", "fake_worker.py", &all, settings));
}

#[test]
fn an_idle_service_unloads_and_the_next_request_or_job_loads_it_again() {
    let env = Env::new();
    model_m(
        &env,
        &[],
        "min_workers = 0\nmax_workers = 2\nidle_timeout = \"1s\"\njobs_share = 1.0",
    );
    let out = env.start_ok();
    // Proven at start: one worker loaded to READY, then let go.
    assert!(
        out.all().contains("unloaded until a request comes"),
        "{out:?}"
    );
    assert_eq!(spawns(&env, "pids").len(), 1);
    let s = service(&env, "m");
    assert_eq!(s["state"], "unloaded", "{s}");
    assert_eq!(s["scaling"]["loaded"], false, "{s}");
    assert!(
        !alive(spawns(&env, "pids")[0]),
        "the proof's process is gone"
    );
    assert_eq!(
        env.get("/readyz").unwrap().0,
        200,
        "an unloaded service is ready to load"
    );
    assert_eq!(env.metric("paddock_service_loaded{service=\"m\"}"), 0.0);

    // The first request loads a worker and is answered.
    let r = call(env.port, "m/predict", &json!({"op": "echo", "n": 1}));
    assert_eq!(r.code, 200, "{}", r.text());
    let first = pid_of(&r);
    let last_request = Instant::now();
    let s = service(&env, "m");
    assert_eq!(s["scaling"]["loaded"], true, "{s}");
    assert_eq!(s["scaling"]["cold_starts"], 1, "{s}");
    assert!(s["scaling"]["last_cold_start_ms"].as_u64().is_some(), "{s}");

    // Unloaded within 3 s of the last request: its process gone.
    wait_until(Duration::from_secs(3), "the idle service to unload", || {
        (service(&env, "m")["state"] == "unloaded" && !alive(first)).then_some(())
    });
    assert!(last_request.elapsed() < Duration::from_secs(3));
    let s = service(&env, "m");
    assert!(
        s["scaling"]["unloaded_reason"]
            .as_str()
            .unwrap()
            .contains("idle_timeout"),
        "{s}"
    );
    assert!(
        s["reason"].as_str().unwrap().contains("unloaded since"),
        "{s}"
    );

    // The next request is answered after a cold start by a new process.
    let r = call(env.port, "m/predict", &json!({"op": "echo", "n": 2}));
    assert_eq!(r.code, 200, "{}", r.text());
    assert_ne!(pid_of(&r), first);
    wait_until(Duration::from_secs(3), "the second unload", || {
        (service(&env, "m")["state"] == "unloaded").then_some(())
    });

    // A durable job loads it like a request does.
    let id = enqueue_id(&env, "/v1/jobs/m/predict", &json!({"op": "echo", "n": 3}));
    let (code, v) = get_json(&env, &format!("/v1/jobs/{id}?wait=20s"));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(service(&env, "m")["scaling"]["cold_starts"], 3);
    assert_eq!(env.metric("paddock_cold_starts_total{service=\"m\"}"), 3.0);
    assert!(env.metric("paddock_scale_events_total{service=\"m\",direction=\"down\"") >= 2.0);
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn twenty_requests_at_an_unloaded_service_start_one_worker_and_never_more_than_max() {
    let env = Env::new();
    // The queue stays long, but scale_up_after is far off: the demand start is the
    // only one; max_workers bounds it anyway.
    model_m(
        &env,
        &[("FAKE_SETUP_SLEEP", "0.5")],
        "min_workers = 0\nmax_workers = 3\nidle_timeout = \"60s\"\nscale_up_after = \"60s\"",
    );
    env.start_ok();
    assert_eq!(spawns(&env, "pids").len(), 1, "the proof");
    let threads: Vec<_> = (0..20)
        .map(|n| {
            let port = env.port;
            std::thread::spawn(move || call(port, "m/predict", &json!({"op": "echo", "n": n})))
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for r in &answers {
        assert_eq!(r.code, 200, "{}", r.text());
    }
    let served: std::collections::BTreeSet<i32> = answers.iter().map(pid_of).collect();
    assert_eq!(served.len(), 1, "one worker served them all: {served:?}");
    assert_eq!(
        spawns(&env, "pids").len(),
        2,
        "the proof, then exactly one start"
    );
    env.stop_ok();
}

#[test]
fn a_setup_that_fails_while_requests_wait_answers_them_with_its_cause() {
    let env = Env::new();
    let broken = env.path().join("broken");
    let broken_s = broken.display().to_string();
    env.config(&env.worker_with(
        "m",
        "fake_worker.py",
        &[("FAKE_SETUP_FAIL_IF_EXISTS", &broken_s)],
        "min_workers = 0\nmax_workers = 1\nidle_timeout = \"60s\"\nstartup_timeout = \"10s\"\nqueue_timeout = \"30s\"\nbackoff_initial = \"100ms\"",
    ));
    env.start_ok();
    // The model breaks after the start proved it (its weights were replaced).
    std::fs::write(&broken, "").unwrap();
    let t0 = Instant::now();
    let threads: Vec<_> = (0..3)
        .map(|n| {
            let port = env.port;
            std::thread::spawn(move || call(port, "m/predict", &json!({"op": "echo", "n": n})))
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.code, 503, "{}", r.text());
        let v = r.json();
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("failed before it was ready: setup() raised an exception"),
            "{v}"
        );
        assert!(error.contains("paddock logs m"), "{v}");
        assert_eq!(v["cause"]["state"], "unloaded", "{v}");
        // The traceback stays in the service's log (expose_errors is off).
        assert!(!r.text().contains("Traceback"), "{v}");
        assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    }
    let logs = env.run(&["logs", "m"]);
    assert!(logs.stdout.contains("cannot load weights"), "{logs:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the cause arrives within the startup timeout, not after queue_timeout: {:?}",
        t0.elapsed()
    );
    // Fixed: the next request after the backoff loads it.
    std::fs::remove_file(&broken).unwrap();
    wait_until(Duration::from_secs(10), "a working cold start", || {
        let r = call(env.port, "m/predict", &json!({"op": "echo", "n": 9}));
        (r.code == 200).then_some(())
    });
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn three_models_share_a_budget_lru_first_and_a_busy_worker_is_never_evicted() {
    let mut env = Env::new();
    env.instance_extra = "memory_budget = \"700MiB\"".into();
    let mut services = String::new();
    for name in ["a", "b", "c"] {
        services.push_str(&env.worker_with(
            name,
            "fake_worker.py",
            &[
                ("FAKE_HOLD_MB", "300"),
                ("FAKE_PIDFILE", &env.path().join(name).display().to_string()),
            ],
            "min_workers = 0\nmax_workers = 1\nidle_timeout = \"60s\"",
        ));
    }
    env.config(&services);
    env.start_ok();
    let budget = 700u64 << 20;
    let loaded = |env: &Env| -> Vec<String> {
        env.status()["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["scaling"]["loaded"] == true)
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    // Sample, the whole time: at most two loaded, never above the budget.
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(Mutex::new((0usize, 0u64)));
    let sampler = {
        let (stop, worst, port) = (stop.clone(), worst.clone(), env.port);
        // A sampling period, not a wait for an event.
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some((200, body)) = crate::harness::http_get(port, "/status") {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    let n = v["services"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|s| s["scaling"]["loaded"] == true)
                        .count();
                    let used = v["instance"]["memory"]["used_bytes"].as_u64().unwrap();
                    let mut w = worst.lock().unwrap();
                    w.0 = w.0.max(n);
                    w.1 = w.1.max(used);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let ask = |svc: &str, body: Value| {
        let r = call(env.port, &format!("{svc}/predict"), &body);
        assert_eq!(r.code, 200, "{svc}: {}", r.text());
        r
    };
    let t0 = Instant::now();
    ask("a", json!({"op": "echo", "n": 1}));
    ask("b", json!({"op": "echo", "n": 1}));
    assert_eq!(loaded(&env), ["a", "b"]);
    ask("c", json!({"op": "echo", "n": 1}));
    assert_eq!(
        loaded(&env),
        ["b", "c"],
        "a, the least recently used, made room"
    );
    let a = service(&env, "a");
    assert!(
        a["scaling"]["last_eviction"]
            .as_str()
            .unwrap()
            .contains("to make room for c"),
        "{a}"
    );

    // A slow request on b spans the next evictions: b is the least recently used,
    // yet c goes (idle), then a goes, and b's request is answered by its worker.
    let b_pid = service(&env, "b")["workers"][0]["pid"].as_i64().unwrap();
    let slow = {
        let port = env.port;
        std::thread::spawn(move || call(port, "b/predict", &json!({"op": "sleep", "s": 2.0})))
    };
    wait_until(Duration::from_secs(5), "b busy", || {
        (service(&env, "b")["workers"][0]["state"] == "busy").then_some(())
    });
    ask("a", json!({"op": "echo", "n": 2}));
    assert_eq!(loaded(&env), ["a", "b"], "c went, not the busy b");
    let r = slow.join().unwrap();
    assert_eq!(r.code, 200, "{}", r.text());
    assert_eq!(
        service(&env, "b")["workers"][0]["pid"],
        b_pid,
        "b's worker served it"
    );

    // Round-robin for the rest of 30 s: every request answered.
    let served = AtomicUsize::new(0);
    let mut i = 0;
    while t0.elapsed() < Duration::from_secs(30) {
        let svc = ["c", "a", "b"][i % 3];
        ask(svc, json!({"op": "echo", "n": i}));
        served.fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let (most, peak) = *worst.lock().unwrap();
    assert!(most <= 2, "{most} services were loaded at once");
    assert!(
        peak <= budget,
        "the workers held {peak} bytes, over the budget of {budget}"
    );
    assert!(served.load(Ordering::Relaxed) > 10);
    for name in ["a", "b", "c"] {
        let s = service(&env, name);
        assert!(s["scaling"]["evictions"].as_u64().unwrap() >= 2, "{s}");
    }
    assert!(env.metric("paddock_evictions_total") >= 6.0);
    assert_eq!(env.metric("paddock_memory_budget_bytes"), budget as f64);
    env.stop_ok();
    env.assert_nothing_left();
}

/// Scale events so far: (up, down).
fn scale_events(env: &Env, svc: &str) -> (u64, u64) {
    let s = service(env, svc);
    (
        s["scaling"]["scale_ups"].as_u64().unwrap(),
        s["scaling"]["scale_downs"].as_u64().unwrap(),
    )
}

/// Sends requests that each keep a worker `busy` seconds, `per_second` times a
/// second (open loop: arrivals do not wait for answers), for `secs`; every
/// answer must be 200. Returns how many were sent.
fn steady_load(port: u16, svc: &str, per_second: f64, busy: f64, secs: f64) -> usize {
    let t0 = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / per_second);
    let mut threads = vec![];
    let mut n = 0u32;
    while t0.elapsed() < Duration::from_secs_f64(secs) {
        let path = format!("{svc}/predict");
        threads.push(std::thread::spawn(move || {
            let r = call(port, &path, &json!({"op": "sleep", "s": busy}));
            assert_eq!(r.code, 200, "{}", r.text());
        }));
        n += 1;
        // Pacing the arrivals (the load's shape), not waiting for an event.
        let next = t0 + gap * n;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let sent = threads.len();
    for t in threads {
        t.join().unwrap();
    }
    sent
}

#[test]
fn workers_follow_the_load_up_to_max_and_back_and_a_steady_load_does_not_flap() {
    let env = Env::new();
    env.config(&env.worker(
        "m",
        "min_workers = 1\nmax_workers = 4\nidle_timeout = \"2s\"\nscale_up_after = \"500ms\"",
    ));
    env.start_ok();
    assert_eq!(service(&env, "m")["workers"].as_array().unwrap().len(), 1);

    // Eight workers' worth: the service grows to its maximum, and no further.
    let load = {
        let port = env.port;
        std::thread::spawn(move || steady_load(port, "m", 40.0, 0.2, 5.0))
    };
    wait_until(Duration::from_secs(10), "4 workers", || {
        let s = service(&env, "m");
        (s["scaling"]["workers"] == 4).then_some(())
    });
    load.join().unwrap();
    let s = service(&env, "m");
    assert_eq!(
        s["scaling"]["workers"], 4,
        "never more than max_workers: {s}"
    );
    assert_eq!(scale_events(&env, "m"), (3, 0));

    // The load stops: back to min_workers through idle_timeout.
    wait_until(Duration::from_secs(10), "back to 1 worker", || {
        let s = service(&env, "m");
        (s["scaling"]["workers"] == 1 && s["workers"].as_array().unwrap().len() == 1).then_some(())
    });
    assert_eq!(scale_events(&env, "m"), (3, 3));

    // A steady 1.5 workers' worth (7.5 requests/s of 0.2 s): one more worker
    // starts, and then nothing starts or stops while the load holds.
    let before = scale_events(&env, "m");
    let sent = steady_load(env.port, "m", 7.5, 0.2, 10.0);
    assert!(sent >= 70, "{sent}");
    let after = scale_events(&env, "m");
    assert!(
        after.0 - before.0 <= 1 && after.1 == before.1,
        "the steady load flapped: {before:?} -> {after:?}"
    );
    assert!(
        env.metric("paddock_scale_events_total{service=\"m\",direction=\"up\",reason=\"load\"}")
            >= 3.0
    );
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn on_demand_loading_keeps_working_through_reload_and_a_worker_crash() {
    let env = Env::new();
    model_m(
        &env,
        &[],
        "min_workers = 0\nmax_workers = 2\nidle_timeout = \"1s\"",
    );
    env.start_ok();
    // Reload while unloaded: nothing to replace; the next start loads the new code.
    let out = env.run(&["reload"]);
    assert_eq!(out.code, 0, "{out:?}");
    let r = call(env.port, "m/predict", &json!({"op": "echo", "n": 1}));
    assert_eq!(r.code, 200, "{}", r.text());
    let loaded = pid_of(&r);
    // Reload while loaded: the worker is replaced, and the service still serves.
    let out = env.run(&["reload"]);
    assert_eq!(out.code, 0, "{out:?}");
    let r = call(env.port, "m/predict", &json!({"op": "echo", "n": 2}));
    assert_eq!(r.code, 200, "{}", r.text());
    let replaced = pid_of(&r);
    assert_ne!(replaced, loaded);
    // A crash: answered 502, the worker restarted in its slot, the next request 200.
    let r = call(env.port, "m/predict", &json!({"op": "segv"}));
    assert_eq!(r.code, 502, "{}", r.text());
    let r = call(env.port, "m/predict", &json!({"op": "echo", "n": 3}));
    assert_eq!(r.code, 200, "{}", r.text());
    assert_ne!(pid_of(&r), replaced);
    // And it still unloads when idle, and loads again.
    wait_until(Duration::from_secs(5), "the unload", || {
        (service(&env, "m")["state"] == "unloaded").then_some(())
    });
    let r = call(env.port, "m/predict", &json!({"op": "echo", "n": 4}));
    assert_eq!(r.code, 200, "{}", r.text());
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn a_start_the_budget_cannot_fit_answers_503_naming_the_budget_and_what_holds_it() {
    let mut env = Env::new();
    env.instance_extra = "memory_budget = \"500MiB\"".into();
    // `a` keeps its worker (min_workers = 1): nothing may be evicted for `b`.
    let services =
        format!(
        "{}{}",
        env.worker_with("a", "fake_worker.py", &[("FAKE_HOLD_MB", "300")], "workers = 1"),
        env.worker_with(
            "b",
            "fake_worker.py",
            &[("FAKE_HOLD_MB", "300")],
            "min_workers = 0\nmax_workers = 1\nqueue_timeout = \"1s\"\nstartup_timeout = \"2s\"",
        )
    );
    env.config(&services);
    env.start_ok();
    let t0 = Instant::now();
    let r = call(env.port, "b/predict", &json!({"op": "echo", "n": 1}));
    let waited = t0.elapsed();
    assert_eq!(r.code, 503, "{}", r.text());
    let v = r.json();
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("memory_budget 500 MiB is held"), "{v}");
    assert!(error.contains("a 3"), "what holds it, and how much: {v}");
    assert!(
        error.contains("b needs about 3"),
        "what the start waited for: {v}"
    );
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    // It waited queue_timeout + startup_timeout (no worker was ready), not longer.
    assert!(waited >= Duration::from_millis(2900), "{waited:?}");
    assert!(waited < Duration::from_secs(6), "{waited:?}");
    // `a` was never touched, and `b` never started.
    assert_eq!(service(&env, "a")["scaling"]["evictions"], 0);
    assert_eq!(service(&env, "b")["state"], "unloaded");
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn workers_started_by_scaling_keep_their_gpu_placement() {
    let env = Env::new();
    env.config(&env.worker(
        "m",
        "min_workers = 1\nmax_workers = 2\ndevices = [0, 1]\nworkers_per_device = 1\nscale_up_after = \"200ms\"\nidle_timeout = \"60s\"",
    ));
    env.start_ok();
    let load = {
        let port = env.port;
        std::thread::spawn(move || steady_load(port, "m", 20.0, 0.2, 3.0))
    };
    let workers = wait_until(Duration::from_secs(10), "a second worker", || {
        let s = service(&env, "m");
        let w = s["workers"].as_array().unwrap().clone();
        (w.len() == 2 && w.iter().all(|w| w["state"] != "starting")).then_some(w)
    });
    load.join().unwrap();
    for w in &workers {
        assert_eq!(
            w["device"], w["index"],
            "worker {} on device {}",
            w["index"], w["device"]
        );
        assert_eq!(
            w["env_set"]["CUDA_VISIBLE_DEVICES"],
            w["index"].to_string(),
            "{w}"
        );
    }
    env.stop_ok();
}
