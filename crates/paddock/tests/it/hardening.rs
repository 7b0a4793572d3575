//! What a hostile client, a careless config or an operator's mistake can do: slow
//! and idle connections, a flood of them, files other users could read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Env, call, wait_until};

/// Opens a connection and sends half a request head (no blank line).
fn half_sent(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"POST /v1/fake HTTP/1.1\r\nX: b").unwrap();
    s
}

/// `paddock stop`, which must succeed within 5 s: nothing holds it up.
pub(crate) fn stop_at_once(env: &Env) {
    let out = env.run(&["stop"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.took < Duration::from_secs(5),
        "stop took {:?}",
        out.took
    );
}

/// Connects, sends `bytes`, and reads what the gateway answers first (within 10 s).
pub(crate) fn sent(port: u16, bytes: &[u8]) -> (TcpStream, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(bytes).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    (s, text)
}

/// Whether the server closed `s` (EOF or reset) within `limit`.
pub(crate) fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or similar before the close is fine; keep reading to the end.
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn a_half_sent_request_does_not_hold_up_stop() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    let mut slow = half_sent(env.port);
    let mut idle = TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    // Make sure both are accepted and being read before the stop.
    let r = call(env.port, "fake", &json!({"op": "echo", "n": 1}));
    assert_eq!(r.code, 200);
    stop_at_once(&env);
    assert!(closed_within(&mut slow, Duration::from_secs(1)));
    assert!(closed_within(&mut idle, Duration::from_secs(1)));
    env.assert_nothing_left();
}

#[test]
fn sigterm_is_not_held_up_by_a_half_sent_request_either() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    let _slow = half_sent(env.port);
    let pid = env.lock_info().unwrap()["pid"].as_i64().unwrap() as i32;
    let t = Instant::now();
    crate::harness::kill(pid, 15);
    wait_until(
        Duration::from_secs(5),
        "the daemon to exit on SIGTERM",
        || (!crate::harness::alive(pid)).then_some(()),
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    env.assert_nothing_left();
}

#[test]
fn slow_and_idle_connections_are_closed_after_header_timeout() {
    let mut env = Env::new();
    env.instance_extra = "header_timeout = \"500ms\"\n".into();
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    let mut slow = half_sent(env.port);
    let mut idle = TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    // A keep-alive connection that sent one request and then went quiet.
    let mut kept = TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    let body = br#"{"op": "echo", "n": 1}"#;
    write!(
        kept,
        "POST /v1/fake HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    kept.write_all(body).unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut slow, Duration::from_secs(5)), "slow");
    assert!(closed_within(&mut idle, Duration::from_secs(5)), "idle");
    assert!(closed_within(&mut kept, Duration::from_secs(5)), "kept");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // The gateway still serves.
    assert_eq!(
        call(env.port, "fake", &json!({"op": "echo", "n": 2})).code,
        200
    );
    env.stop_ok();
}

#[test]
fn a_body_that_never_arrives_gets_408() {
    let mut env = Env::new();
    env.instance_extra = "body_timeout = \"300ms\"\n".into();
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    let (_s, text) = sent(
        env.port,
        b"POST /v1/fake HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"op\"",
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    env.stop_ok();
}

#[test]
fn a_flood_of_idle_and_slow_connections_at_the_descriptor_limit_harms_nothing() {
    let mut env = Env::new();
    // The daemon runs with 1,024 descriptors, soft and hard, so the limit is real.
    env.wrap = vec!["prlimit".into(), "--nofile=1024:1024".into(), "--".into()];
    env.instance_extra = "header_timeout = \"1s\"\n".into();
    env.config(&env.worker("fake", "workers = 2"));
    env.start_ok();
    // This test holds ~3,200 sockets itself.
    paddock_sys::limits::raise_nofile().unwrap();
    assert!(
        paddock_sys::limits::nofile_soft() > 4000,
        "the test needs 4,000 descriptors"
    );

    let idle: Vec<TcpStream> = (0..3000)
        .map(|_| TcpStream::connect(("127.0.0.1", env.port)).unwrap())
        .collect();
    let slow: Vec<TcpStream> = (0..100).map(|_| half_sent(env.port)).collect();
    // Slowloris: one more header byte on each slow connection, now and then,
    // until the server closes it (bounded: 40 rounds).
    let trickle = std::thread::spawn(move || {
        let mut slow = slow;
        for _ in 0..40 {
            slow.retain_mut(|s| s.write_all(b"x").is_ok());
            if slow.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        slow.len()
    });

    // The control socket answers while the gateway is flooded.
    let out = env.run(&["status", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.took < Duration::from_secs(1),
        "status took {:?}",
        out.took
    );

    // Normal requests get through: those beyond the cap wait in the backlog until
    // idle connections are closed.
    let t = Instant::now();
    for i in 0..1000 {
        let r = call(env.port, "fake", &json!({"op": "echo", "n": i}));
        assert_eq!(r.code, 200, "request {i}: {}", r.text());
    }
    let served_in = t.elapsed();
    let out = env.run(&["status", "--json"]);
    assert!(
        out.took < Duration::from_secs(1),
        "status took {:?}",
        out.took
    );
    let still_open = trickle.join().unwrap();
    assert_eq!(
        still_open, 0,
        "slowloris connections outlived header_timeout"
    );
    drop(idle);

    // A new batch of idle connections does not delay the stop.
    let _idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(("127.0.0.1", env.port)).unwrap())
        .collect();
    let out = env.run(&["stop"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.took < Duration::from_secs(10),
        "stop took {:?}",
        out.took
    );
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(log.contains("descriptor limit 1024"), "{log}");
    eprintln!("1,000 requests through the flood in {served_in:?}");
    env.assert_nothing_left();
}

#[test]
fn every_file_and_folder_paddock_writes_is_private_whatever_the_umask() {
    let mut env = Env::new();
    env.wrap = vec![
        "sh".into(),
        "-c".into(),
        "umask 000; exec \"$0\" \"$@\"".into(),
    ];
    let db = env.path().join("data/jobs.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    env.instance_extra = format!("store = \"sqlite:{}\"\n", db.display());
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    let r = crate::harness::post(
        env.port,
        "/v1/jobs/fake",
        "application/json",
        br#"{"op": "echo", "n": 1}"#,
    )
    .unwrap();
    assert_eq!(r.code, 202, "{}", r.text());
    let state = env.state_dir();
    let mut files = vec![
        db.clone(),
        db.with_extension("db-wal"),
        db.with_extension("db-shm"),
        state.join("daemon.log"),
        state.join("lock"),
        state.join("logs/fake.log"),
    ];
    files.retain(|f| f.exists() || f == &db);
    assert!(files.len() >= 4, "{files:?}");
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", f.display());
    }
    for d in [state.clone(), state.join("logs")] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", d.display());
    }
    // Workers get the umask paddock was started with, not its own.
    let r = call(env.port, "fake", &json!({"op": "umask"}));
    assert_eq!(r.code, 200, "{}", r.text());
    assert_eq!(r.json()["umask"], 0, "{}", r.text());
    env.stop_ok();
}

#[test]
fn env_values_from_the_config_are_shown_by_name_only() {
    let env = Env::new();
    let secret = "hf_TOPSECRETvalue123";
    env.config(&env.worker_with(
        "fake",
        "fake_worker.py",
        &[("HF_TOKEN", secret)],
        "workers = 1",
    ));
    env.start_ok();
    let (code, body) = env.get("/status").unwrap();
    assert_eq!(code, 200);
    assert!(!body.contains(secret), "{body}");
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    let w = &st["services"][0]["workers"][0];
    let names: Vec<&str> = w["env_from_config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(names.contains(&"HF_TOKEN"), "{w}");
    // What paddock computed itself stays visible.
    assert_eq!(w["env_set"]["PADDOCK_SERVICE"], "fake", "{w}");
    assert!(w["env_set"]["OMP_NUM_THREADS"].is_string(), "{w}");
    let out = env.run(&["status", "--json"]);
    assert!(!out.stdout.contains(secret));
    let out = env.run(&["status"]);
    assert!(!out.stdout.contains(secret));
    let (_, metrics) = env.get("/metrics").unwrap();
    assert!(!metrics.contains(secret));
    // A crash's error body carries the log tail, never the environment.
    let r = call(env.port, "fake", &json!({"op": "segv"}));
    assert_eq!(r.code, 502);
    assert!(!r.text().contains(secret), "{}", r.text());
    env.stop_ok();
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    assert!(!log.contains(secret), "{log}");
}

#[test]
fn bad_input_is_a_400_with_the_message_only_and_tracebacks_stay_in_the_log() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    // Invalid JSON: req.json() raises paddock.BadRequest.
    let r = crate::harness::post(env.port, "/v1/fake", "application/json", b"{not json").unwrap();
    assert_eq!(r.code, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["cause"]["kind"], "bad_request", "{v}");
    assert!(v["error"].as_str().unwrap().contains("JSON"), "{v}");
    assert!(!r.text().contains("Traceback"), "{v}");
    assert!(!r.text().contains(".py"), "{v}");
    // The worker was not harmed.
    assert_eq!(
        call(env.port, "fake", &json!({"op": "echo", "n": 1})).code,
        200
    );
    env.stop_ok();
}

#[test]
fn expose_errors_sends_the_traceback_and_is_loopback_only() {
    let mut env = Env::new();
    env.instance_extra = "expose_errors = true\n".into();
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    let r = call(env.port, "fake", &json!({"op": "raise"}));
    assert_eq!(r.code, 500, "{}", r.text());
    let v = r.json();
    assert!(
        v["cause"]["traceback"]
            .as_str()
            .unwrap()
            .contains("Traceback"),
        "{v}"
    );
    assert!(
        v["cause"]["message"]
            .as_str()
            .unwrap()
            .contains("bad input"),
        "{v}"
    );
    env.stop_ok();

    let env = Env::new();
    env.raw_config(
        "[instance]\nlisten = \"0.0.0.0:8799\"\nauth_token = \"t0ken-long-enough\"\nexpose_errors = true\n[services.m]\ncommand = [\"python3\"]\n",
    );
    let out = env.run(&["check"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("paddock.toml:4:"), "{out:?}");
    assert!(out.stderr.contains("expose_errors"), "{out:?}");
}

#[test]
fn status_json_into_a_closed_pipe_does_not_panic() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 2"));
    env.start_ok();
    // `| head -c 0`: the reader is gone before status writes anything.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = env
        .command(&["status", "--json"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err}");
    // Ended by SIGPIPE, as `cat` would be, not exit 101 (a panic).
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(13), "{:?}", out.status);
    env.stop_ok();
}

#[test]
fn deleting_the_state_folder_while_running_is_detected_and_repaired() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    let pid = env.lock_info().unwrap()["pid"].as_i64().unwrap();
    std::fs::remove_dir_all(env.state_dir()).unwrap();
    // The daemon puts its lock and control socket back: status and stop find it.
    let out = wait_until(Duration::from_secs(10), "status to find the daemon", || {
        let out = env.run(&["status", "--json"]);
        (out.code == 0).then_some(out)
    });
    let st: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(st["instance"]["pid"], pid, "{st}");
    // A job would go into a deleted database: refused, with the reason.
    let r = crate::harness::post(env.port, "/v1/jobs/fake", "application/json", b"{}").unwrap();
    assert_eq!(r.code, 503, "{}", r.text());
    assert!(r.text().contains("was deleted"), "{}", r.text());
    // Online requests still work.
    assert_eq!(
        call(env.port, "fake", &json!({"op": "echo", "n": 1})).code,
        200
    );
    // A second start names the daemon that runs.
    let out = env.run(&["start"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains(&format!("pid {pid}")), "{out:?}");
    env.stop_ok();
    env.assert_nothing_left();
}
