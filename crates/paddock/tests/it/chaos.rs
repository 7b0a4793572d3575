//! Chaos: thousands of requests at concurrency 32 over 4 workers, where some crash
//! their worker with SIGSEGV and some spin forever. Every request gets its own,
//! correct answer; the daemon survives; nothing leaks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Env, call};

const TOTAL: usize = 5000;
const CONCURRENCY: usize = 32;
const TIMEOUT_MS: u64 = 1000;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Healthy,
    Segv,
    Spin,
}

/// 2 % crash, 1 % spin, spread evenly (deterministic, no RNG dependency).
fn kind_of(i: usize) -> Kind {
    match i % 100 {
        17 | 67 => Kind::Segv,
        42 => Kind::Spin,
        _ => Kind::Healthy,
    }
}

#[test]
fn chaos_every_request_gets_its_own_answer() {
    let env = Env::new();
    env.config(&env.worker(
        "fake",
        &format!(
            "workers = 4\nrequest_timeout = \"{TIMEOUT_MS}ms\"\nqueue_timeout = \"120s\"\nmax_queue = 1024"
        ),
    ));
    env.start_ok();
    let next = Arc::new(AtomicUsize::new(0));
    let port = env.port;
    let t = Instant::now();
    let threads: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut problems = vec![];
                let mut counts = [0usize; 3];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= TOTAL {
                        return (problems, counts);
                    }
                    let kind = kind_of(i);
                    let body = match kind {
                        Kind::Healthy => json!({"op": "echo", "n": i}),
                        Kind::Segv => json!({"op": "segv", "n": i}),
                        Kind::Spin => json!({"op": "spin", "n": i}),
                    };
                    let r = call(port, "fake", &body);
                    let ok = match kind {
                        Kind::Healthy => r.code == 200 && r.json()["n"] == i,
                        Kind::Segv => r.code == 502 && r.json()["cause"]["signal"] == "SIGSEGV",
                        Kind::Spin => {
                            r.code == 504 && {
                                let ran = r.json()["cause"]["ran_ms"].as_u64().unwrap_or(u64::MAX);
                                ran <= TIMEOUT_MS + 1000
                            }
                        }
                    };
                    counts[kind as usize] += 1;
                    if !ok {
                        problems.push(format!("#{i} {kind:?}: {} {}", r.code, r.text()));
                    }
                }
            })
        })
        .collect();
    let mut problems = vec![];
    let mut counts = [0usize; 3];
    for t in threads {
        let (p, c) = t.join().unwrap();
        problems.extend(p);
        for k in 0..3 {
            counts[k] += c[k];
        }
    }
    eprintln!(
        "chaos: {TOTAL} requests in {:?}: {} healthy, {} segv, {} spin",
        t.elapsed(),
        counts[0],
        counts[1],
        counts[2]
    );
    assert!(
        problems.is_empty(),
        "{} wrong answers, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    assert_eq!(counts, [4850, 100, 50]);

    // The daemon is alive and all four workers come back ready.
    let st = crate::harness::wait_until(Duration::from_secs(20), "4 ready workers", || {
        let st = env.status();
        let ready = st["services"][0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "ready")
            .count();
        (ready == 4).then_some(st)
    });
    assert_eq!(st["instance"]["ready"], true);
    let (_, m) = env.get("/metrics").unwrap();
    assert!(
        m.contains(r#"paddock_deadline_kills_total{service="fake"} 50"#),
        "{m}"
    );
    env.stop_ok();
    env.assert_nothing_left();
}
