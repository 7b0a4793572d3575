//! `listen_fd`: paddock holds a process service's listening socket, so a reload
//! refuses no connection (they wait in the backlog for the next generation).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::{Env, fixture, test_python, wait_until};

fn get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    if out.starts_with("HTTP/1.0 200") {
        Ok(out)
    } else {
        Err(format!("answer: {out:?}"))
    }
}

fn service(env: &Env, extra: &str) -> String {
    format!(
        "[services.web]\nkind = \"process\"\ncommand = [\"python3\", {:?}, \"--tag\", {:?}]\nport = \"auto\"\n{extra}\n",
        fixture("listen_fd_server.py"),
        env.path().display().to_string()
    )
}

/// Four clients GET `port` in a loop (one on a slow path) while `reloads` reloads
/// run one after another; returns (answered, failures). Bounded: 5,000 requests a
/// client at most.
fn load_through_reloads(env: &Env, port: u16, reloads: usize) -> (usize, Vec<String>) {
    load_through_reloads_when(env, port, reloads, || {})
}

/// The same, calling `settled` before each reload (it returns once the service is
/// in a state where a reload is fair).
fn load_through_reloads_when(
    env: &Env,
    port: u16,
    reloads: usize,
    settled: impl Fn(),
) -> (usize, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(vec![]));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            std::thread::spawn(move || {
                for _ in 0..5000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match get(port, if i == 0 { "/slow" } else { "/" }) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(e);
                            0
                        }
                    };
                }
            })
        })
        .collect();
    for _ in 0..reloads {
        settled();
        let out = env.run(&["reload"]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    (ok.load(Ordering::Relaxed), failures)
}

#[test]
fn a_reload_under_load_refuses_no_connection() {
    let env = Env::new();
    env.config(&service(
        &env,
        "listen_fd = true\nhealth = { http = \"/\" }\nhealth_interval = \"200ms\"",
    ));
    env.start_ok();
    let port = env.status()["services"][0]["port"].as_u64().unwrap() as u16;
    let first = env.status()["services"][0]["workers"][0]["pid"].clone();

    let (served, failures) = load_through_reloads(&env, port, 5);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(served >= 20, "{served}");
    let st = env.status();
    let w = &st["services"][0]["workers"][0];
    assert_ne!(w["pid"], first, "{st}");
    assert_eq!(w["generation"], 6, "{st}");
    // The program got the socket, not a port of its own.
    let log = std::fs::read_to_string(env.state_dir().join("logs/web.log")).unwrap();
    assert!(log.contains("serving on inherited fd 3"), "{log}");
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn listen_fd_needs_a_probe_that_proves_the_program_answers() {
    let env = Env::new();
    env.config(&service(&env, "listen_fd = true"));
    let out = env.run(&["check"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("listen_fd"), "{out:?}");
    assert!(out.stderr.contains("tcp probe"), "{out:?}");
    env.config(&service(&env, "listen_fd = true\nhealth = { tcp = true }"));
    assert_eq!(env.run(&["check"]).code, 2);
}

/// The real thing: gunicorn reads LISTEN_FDS/LISTEN_PID and serves paddock's socket.
#[test]
fn gunicorn_is_reloaded_under_load_with_no_failed_request() {
    let env = Env::new();
    let python = test_python("import gunicorn");
    let app_dir = format!("{}/../../examples/gunicorn", env!("CARGO_MANIFEST_DIR"));
    env.config(&format!(
        "[services.web]\nkind = \"process\"\ncommand = [{python:?}, \"-m\", \"gunicorn\", \"--workers\", \"2\", \"--graceful-timeout\", \"10\", \"--bind\", \"127.0.0.1:1\", \"--chdir\", {app_dir:?}, \"app:app\"]\nport = \"auto\"\nlisten_fd = true\nhealth = {{ http = \"/\" }}\nstop_timeout = \"15s\"\n"
    ));
    env.start_ok();
    let port = env.status()["services"][0]["port"].as_u64().unwrap() as u16;
    // gunicorn ignores --bind when LISTEN_FDS names a socket for it: it answers on
    // the port only paddock bound.
    assert!(get(port, "/").unwrap().contains("ok "));
    // gunicorn loses a SIGTERM that arrives while its master is still booting a
    // worker: that worker serves on until --graceful-timeout, and is then SIGKILLed
    // by gunicorn itself, mid-request (seen here as one empty answer in ~20 runs;
    // docs/operations.md). paddock's health probe passes with the first worker up,
    // so each reload waits until the running master has booted both of its workers.
    let booted = || {
        let log = std::fs::read_to_string(env.state_dir().join("logs/web.log")).unwrap_or_default();
        let current = log.rsplit("paddock| spawned pid").next().unwrap_or("");
        (current.matches("Booting worker with pid").count() >= 2).then_some(())
    };
    let (served, failures) = load_through_reloads_when(&env, port, 2, || {
        wait_until(
            Duration::from_secs(20),
            "gunicorn booted its 2 workers",
            booted,
        )
    });
    eprintln!(
        "gunicorn through 2 reloads: {served} requests, {} failed",
        failures.len()
    );
    // A rare failure was seen once and not reproduced since: when it happens, say
    // everything paddock and gunicorn logged, so that the next one explains itself.
    let logs = || {
        let read = |p: &str| std::fs::read_to_string(env.state_dir().join(p)).unwrap_or_default();
        format!(
            "daemon.log:\n{}\nlogs/web.log:\n{}",
            read("daemon.log"),
            read("logs/web.log")
        )
    };
    assert!(
        failures.is_empty(),
        "{} failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        logs()
    );
    assert!(served >= 20, "{served}");
    env.stop_ok();
    env.assert_nothing_left();
}
