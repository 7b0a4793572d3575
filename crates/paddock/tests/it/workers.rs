//! Worker services: the protocol, the SDK, the gateway's routes, and what happens
//! when workers misbehave.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Env, alive, call, kill, post, wait_until};

/// Waits until the service's first worker is serving a request.
fn wait_busy(env: &Env) {
    wait_until(Duration::from_secs(10), "the worker to be busy", || {
        (workers_of(env)[0]["state"] == "busy").then_some(())
    });
}

fn workers_of(env: &Env) -> Vec<Value> {
    env.status()["services"][0]["workers"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn requests_reach_handlers_on_the_main_thread() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 2"));
    env.start_ok();
    let r = call(env.port, "fake", &json!({"op": "echo", "n": 7}));
    assert_eq!(r.code, 200, "{}", r.text());
    assert_eq!(r.json()["n"], 7);
    assert_eq!(r.header("content-type"), Some("application/json"));

    // setup and every handler ran on the main thread.
    let r = call(env.port, "fake", &json!({"op": "thread"}));
    assert_eq!(r.json()["thread"], true);
    assert_eq!(r.json()["setup_main"], true);

    // A named handler; bytes in, the same bytes and content type out.
    let raw: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let r = post(env.port, "/v1/fake/echo", "application/x-test", &raw).unwrap();
    assert_eq!(r.code, 200);
    assert_eq!(r.body, raw);
    assert_eq!(r.header("content-type"), Some("application/x-test"));

    // A handler's exception: 500 with an error id (the traceback and message go to
    // the service's log, not the client), and the worker keeps serving.
    let pids: Vec<_> = workers_of(&env).iter().map(|w| w["pid"].clone()).collect();
    let r = call(env.port, "fake", &json!({"op": "raise"}));
    assert_eq!(r.code, 500, "{}", r.text());
    let v = r.json();
    let error_id = v["cause"]["error_id"].as_str().unwrap().to_string();
    assert!(error_id.starts_with("E-"), "{v}");
    assert!(v["error"].as_str().unwrap().contains(&error_id), "{v}");
    assert!(!r.text().contains("Traceback"), "{v}");
    assert!(!r.text().contains("bad input"), "{v}");
    assert!(!r.text().contains(".py"), "{v}");
    let log = wait_until(Duration::from_secs(5), "the error in the log", || {
        let log = std::fs::read_to_string(env.state_dir().join("logs/fake.log")).ok()?;
        log.contains(&error_id).then_some(log)
    });
    assert!(log.contains("ValueError: bad input"), "{log}");
    assert!(log.contains("Traceback"), "{log}");
    assert_eq!(
        call(env.port, "fake", &json!({"op": "echo", "n": 1})).code,
        200
    );
    let after: Vec<_> = workers_of(&env).iter().map(|w| w["pid"].clone()).collect();
    assert_eq!(pids, after, "an exception must not replace the worker");

    // Unknown method, unknown service.
    let r = post(env.port, "/v1/fake/nope", "text/plain", b"x").unwrap();
    assert_eq!(r.code, 404);
    assert!(r.text().contains("predict"), "{}", r.text());
    assert_eq!(
        post(env.port, "/v1/nope", "text/plain", b"x").unwrap().code,
        404
    );

    // Metrics count what happened.
    let (code, m) = env.get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        m.contains(r#"paddock_requests_total{service="fake",method="predict",outcome="ok"}"#),
        "{m}"
    );
    assert!(m.contains(r#"outcome="handler_error"} 1"#), "{m}");
    assert!(m.contains("paddock_model_load_seconds"), "{m}");
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn an_exception_in_setup_fails_the_start_with_its_traceback() {
    let env = Env::new();
    env.config(&env.worker_with("fake", "fake_worker.py", &[("FAKE_SETUP_FAIL", "1")], ""));
    let out = env.run(&["start"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.took < Duration::from_secs(10), "{:?}", out.took);
    assert!(out.stderr.contains("setup() raised"), "{out:?}");
    assert!(out.stderr.contains("Traceback"), "{out:?}");
    assert!(
        out.stderr.contains("cannot load weights: FAKE_SETUP_FAIL"),
        "{out:?}"
    );
    // Shown once: the message names the exception, the worker's lines show the
    // traceback.
    assert_eq!(out.stderr.matches("Traceback").count(), 1, "{}", out.stderr);
    env.assert_nothing_left_now();
}

#[test]
fn a_worker_without_handlers_fails_the_start_saying_how_to_mark_one() {
    let env = Env::new();
    let file = env.path().join("empty_worker.py");
    std::fs::write(
        &file,
        "import paddock\n\nclass Empty:\n    def predict(self, req):\n        return {}\n\npaddock.serve(Empty())\n",
    )
    .unwrap();
    let sdk = format!("{}/../../sdk/python", env!("CARGO_MANIFEST_DIR"));
    env.config(&format!(
        "[services.empty]\ncommand = [\"python3\", {:?}]\nenv = {{ PYTHONPATH = {sdk:?} }}\n",
        file.display().to_string()
    ));
    let out = env.run(&["start"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("Empty has no handler"), "{out:?}");
    assert!(out.stderr.contains("@paddock.handler"), "{out:?}");
    // It is not setup() that failed.
    assert!(!out.stderr.contains("setup() raised"), "{out:?}");
    env.assert_nothing_left_now();
}

#[test]
fn a_crash_is_a_502_naming_the_signal_and_a_replacement_follows() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    let r = call(env.port, "fake", &json!({"op": "segv"}));
    assert_eq!(r.code, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["cause"]["signal"], "SIGSEGV", "{v}");
    assert_eq!(v["cause"]["worker"], 0);
    assert!(v["error"].as_str().unwrap().contains("SIGSEGV"), "{v}");
    // The worker's last lines are the operator's: the client gets the error id
    // that tags them in the service's log.
    assert!(v["cause"].get("log_tail").is_none(), "{v}");
    let id = v["cause"]["error_id"].as_str().unwrap();
    assert!(id.starts_with("E-"), "{v}");
    assert!(
        v["cause"]["log"]
            .as_str()
            .unwrap()
            .contains("paddock logs fake"),
        "{v}"
    );
    let logs = env.run(&["logs", "fake", "-n", "200"]);
    assert!(
        logs.stdout.contains(&format!("error {id}: worker 0")),
        "{logs:?}"
    );
    // The next request is served by the replacement.
    let r = call(env.port, "fake", &json!({"op": "echo", "n": 2}));
    assert_eq!(r.code, 200, "{}", r.text());
    // Exit codes are reported distinctly from signals.
    let r = call(env.port, "fake", &json!({"op": "exit", "code": 3}));
    assert_eq!(r.code, 502);
    assert_eq!(r.json()["cause"]["exit_code"], 3);
    assert_eq!(r.json()["cause"]["signal"], Value::Null);
    env.stop_ok();
}

#[test]
fn a_hang_is_a_504_at_the_deadline_and_the_worker_is_killed() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1\nrequest_timeout = \"1s\""));
    env.start_ok();
    let old = workers_of(&env)[0]["pid"].as_i64().unwrap() as i32;
    let t = Instant::now();
    let r = call(env.port, "fake", &json!({"op": "spin"}));
    let took = t.elapsed();
    assert_eq!(r.code, 504, "{}", r.text());
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(2),
        "{took:?}"
    );
    wait_until(Duration::from_secs(2), "the spinning worker to die", || {
        (!alive(old)).then_some(())
    });
    let r = call(env.port, "fake", &json!({"op": "echo", "n": 3}));
    assert_eq!(r.code, 200);
    assert_ne!(r.json()["pid"].as_i64().unwrap() as i32, old);
    let (_, m) = env.get("/metrics").unwrap();
    assert!(
        m.contains(r#"paddock_deadline_kills_total{service="fake"} 1"#),
        "{m}"
    );
    env.stop_ok();
}

#[test]
fn an_idempotent_method_is_retried_until_it_is_a_poison_request() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 2\nretry_on_crash = 3\npoison_limit = 2"));
    env.start_ok();
    let r = post(env.port, "/v1/fake/crash", "text/plain", b"x").unwrap();
    assert_eq!(r.code, 502, "{}", r.text());
    let v = r.json();
    assert!(
        v["error"].as_str().unwrap().contains("poison request"),
        "{v}"
    );
    assert_eq!(v["cause"]["workers_killed_by_this_request"], 2);
    // Not idempotent: no retry, one worker killed.
    let r = call(env.port, "fake", &json!({"op": "segv"}));
    assert_eq!(r.code, 502);
    assert_eq!(r.json()["cause"]["workers_killed_by_this_request"], 1);
    env.stop_ok();
}

fn misbehaving_worker_is_replaced(mode: &str, expect: &str) {
    let env = Env::new();
    let once = env.path().join("once").display().to_string();
    env.config(&env.worker_with(
        "bad",
        "bad_worker.py",
        &[("BAD_MODE", mode), ("BAD_MODE_ONCE_FILE", &once)],
        "workers = 1",
    ));
    env.start_ok();
    let r = post(env.port, "/v1/bad", "text/plain", b"hello").unwrap();
    assert_eq!(r.code, 502, "{}", r.text());
    assert!(r.text().contains(expect), "{}", r.text());
    // Replaced; the replacement behaves; the daemon is alive.
    let r = wait_until(Duration::from_secs(10), "the replacement to serve", || {
        let r = post(env.port, "/v1/bad", "text/plain", b"hello").unwrap();
        (r.code == 200).then_some(r)
    });
    assert_eq!(r.body, b"hello");
    let w = &workers_of(&env)[0];
    assert!(w["generation"].as_u64().unwrap() >= 2, "{w}");
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(log.contains("protocol violation"), "{log}");
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn a_garbage_frame_gets_the_worker_replaced() {
    misbehaving_worker_is_replaced("garbage", "protocol");
}

#[test]
fn an_oversized_frame_gets_the_worker_replaced() {
    misbehaving_worker_is_replaced("oversized", "exceeds the maximum");
}

#[test]
fn a_reply_with_a_wrong_id_gets_the_worker_replaced() {
    misbehaving_worker_is_replaced("wrong_id", "outstanding request");
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1\nmax_queue = 2"));
    env.start_ok();
    let port = env.port;
    let handles: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || call(port, "fake", &json!({"op": "sleep", "s": 0.5}))))
        .collect();
    let rs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let full: Vec<_> = rs.iter().filter(|r| r.code == 503).collect();
    let ok = rs.iter().filter(|r| r.code == 200).count();
    assert!(!full.is_empty(), "some requests must find the queue full");
    assert!(ok >= 3, "one running and two queued succeed: {ok}");
    assert_eq!(ok + full.len(), 8);
    for r in full {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.text().contains("queue full"), "{}", r.text());
    }
    env.stop_ok();
}

#[test]
fn reload_under_load_fails_no_request() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 2"));
    env.start_ok();
    let before: Vec<_> = workers_of(&env)
        .iter()
        .map(|w| w["pid"].as_i64().unwrap())
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let port = env.port;
    let load: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut bad = vec![];
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let r = call(
                        port,
                        "fake",
                        &json!({"op": "sleep", "s": 0.005, "n": i * 100000 + n}),
                    );
                    if r.code != 200 {
                        bad.push(format!("{} {}", r.code, r.text()));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                bad
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "load to flow", || {
        (done.load(Ordering::Relaxed) > 50).then_some(())
    });
    let out = env.run(&["reload"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("replaced by"), "{out:?}");
    let at_reload = done.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(10),
        "more load after the reload",
        || (done.load(Ordering::Relaxed) > at_reload + 50).then_some(()),
    );
    stop.store(true, Ordering::Relaxed);
    let bad: Vec<String> = load.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert!(bad.is_empty(), "failed requests during reload: {bad:?}");
    let after: Vec<_> = workers_of(&env)
        .iter()
        .map(|w| w["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(after.len(), 2);
    for p in &after {
        assert!(!before.contains(p), "worker {p} was not replaced");
    }
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn max_requests_recycles_without_failing_a_request() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1\nmax_requests = 10"));
    env.start_ok();
    // The old worker keeps serving while its replacement loads, so drive requests
    // until three generations have answered; every one must succeed.
    let mut pids = std::collections::BTreeSet::new();
    let mut n = 0;
    wait_until(
        Duration::from_secs(30),
        "three recycled generations",
        || {
            n += 1;
            let r = call(env.port, "fake", &json!({"op": "echo", "n": n}));
            assert_eq!(r.code, 200, "request {n}: {}", r.text());
            pids.insert(r.json()["pid"].as_i64().unwrap());
            (pids.len() >= 3).then_some(())
        },
    );
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(log.contains("(max_requests)"), "{log}");
    wait_until(Duration::from_secs(10), "the retired worker to go", || {
        (workers_of(&env).len() == 1).then_some(())
    });
    assert_eq!(workers_of(&env).len(), 1);
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn max_rss_recycles_a_worker_that_grew() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1\nmax_rss = \"100MiB\""));
    env.start_ok();
    let r = call(env.port, "fake", &json!({"op": "grow", "mb": 150}));
    assert_eq!(r.code, 200, "{}", r.text());
    let fat = r.json()["pid"].as_i64().unwrap();
    // Requests keep succeeding while the replacement loads; then it takes over.
    let mut n = 0;
    wait_until(
        Duration::from_secs(20),
        "a replacement for the grown worker",
        || {
            n += 1;
            let r = call(env.port, "fake", &json!({"op": "echo", "n": n}));
            assert_eq!(r.code, 200, "{}", r.text());
            (r.json()["pid"].as_i64().unwrap() != fat).then_some(())
        },
    );
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(log.contains("over max_rss"), "{log}");
    wait_until(
        Duration::from_secs(10),
        "the grown worker to be gone",
        || (!crate::harness::alive(fat as i32)).then_some(()),
    );
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn sigkill_of_the_daemon_ends_its_workers_within_a_second() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 3"));
    env.start_ok();
    let pids: Vec<i32> = workers_of(&env)
        .iter()
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect();
    kill(env.daemon_pid(), 9);
    let t = Instant::now();
    wait_until(Duration::from_secs(1), "the workers to exit", || {
        pids.iter().all(|&p| !alive(p)).then_some(())
    });
    eprintln!("workers gone {:?} after the SIGKILL", t.elapsed());
    env.assert_nothing_left();
}

#[test]
fn ten_thousand_sequential_requests_keep_the_daemon_rss_flat() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    let body = json!({"op": "echo", "n": 1});
    for _ in 0..1000 {
        assert_eq!(call(env.port, "fake", &body).code, 200);
    }
    let rss_warm = env.daemon_rss_kib();
    for i in 0..9000 {
        let r = call(env.port, "fake", &json!({"op": "echo", "n": i}));
        assert_eq!(r.code, 200, "request {i}: {}", r.text());
        assert_eq!(r.json()["n"], i);
    }
    let rss_end = env.daemon_rss_kib();
    eprintln!("daemon RSS after 1,000 requests: {rss_warm} KiB; after 10,000: {rss_end} KiB");
    assert!(
        rss_end < rss_warm + 5 * 1024,
        "daemon RSS grew from {rss_warm} KiB to {rss_end} KiB"
    );
    env.stop_ok();
}

#[test]
fn requests_that_cannot_be_framed_are_refused_without_harming_a_worker() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1\nmax_frame = \"8KiB\""));
    env.start_ok();
    let pid = workers_of(&env)[0]["pid"].clone();
    // A Content-Type header far too long for the protocol's 16-bit field.
    let long = "a".repeat(70_000);
    let r = post(env.port, "/v1/fake/echo", &long, b"x").unwrap();
    assert_eq!(r.code, 400, "{}", r.text());
    // A body over this service's max_frame.
    let big = vec![b'x'; 20_000];
    let r = post(env.port, "/v1/fake/echo", "text/plain", &big).unwrap();
    assert_eq!(r.code, 413, "{}", r.text());
    // A method name that cannot be a handler.
    let r = post(env.port, "/v1/fake/bad%00name", "text/plain", b"x").unwrap();
    assert_eq!(r.code, 400, "{}", r.text());
    // The worker was never touched.
    let r = call(env.port, "fake", &json!({"op": "echo", "n": 1}));
    assert_eq!(r.code, 200);
    let w = &workers_of(&env)[0];
    assert_eq!(w["pid"], pid);
    assert_eq!(w["generation"], 1);
    env.stop_ok();
}

#[test]
fn an_answer_is_not_held_back_by_a_worker_slow_to_take_its_next_request() {
    // The actor writes the next queued request before sending the previous answer;
    // when that write cannot finish at once (a body larger than the socket buffer,
    // a worker that pauses before reading), the answer must go out first.
    let env = Env::new();
    env.config(&env.worker_with(
        "slow",
        "bad_worker.py",
        &[("BAD_REPLY_DELAY", "1"), ("BAD_READ_PAUSE", "5")],
        "workers = 1",
    ));
    env.start_ok();
    let port = env.port;
    let first = std::thread::spawn(move || {
        let t = Instant::now();
        let r = post(port, "/v1/slow", "text/plain", b"first").unwrap();
        (r, t.elapsed())
    });
    wait_busy(&env);
    let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let sent = big.clone();
    let second = std::thread::spawn(move || post(port, "/v1/slow", "application/x-big", &sent));
    wait_until(
        Duration::from_secs(10),
        "the second request to be queued",
        || {
            let (_, m) = env.get("/metrics")?;
            m.contains("paddock_queue_depth{service=\"slow\"} 1")
                .then_some(())
        },
    );
    let (r, took) = first.join().unwrap();
    assert_eq!(r.code, 200, "{}", r.text());
    assert_eq!(r.body, b"first");
    assert!(
        took < Duration::from_secs(4),
        "the first answer took {took:?}"
    );
    let r = second.join().unwrap().unwrap();
    assert_eq!(r.code, 200, "{}", r.text());
    assert!(r.body == big, "the large body came back changed");
    env.stop_ok();
}

#[test]
fn a_request_that_waits_past_queue_timeout_gets_503() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1\nqueue_timeout = \"300ms\""));
    env.start_ok();
    let port = env.port;
    let busy = std::thread::spawn(move || call(port, "fake", &json!({"op": "sleep", "s": 3})));
    wait_busy(&env);
    let t = Instant::now();
    let r = call(env.port, "fake", &json!({"op": "echo", "n": 1}));
    let waited = t.elapsed();
    assert_eq!(r.code, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("queue_timeout (300ms)"), "{}", r.text());
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "answered after {waited:?}"
    );
    // The request being served is not affected, and the queue works afterwards.
    assert_eq!(busy.join().unwrap().code, 200);
    assert_eq!(
        call(env.port, "fake", &json!({"op": "echo", "n": 2})).code,
        200
    );
    env.stop_ok();
}
