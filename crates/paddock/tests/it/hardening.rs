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

/// Whether the server closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
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
    let out = env.run(&["stop"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.took < Duration::from_secs(5),
        "stop took {:?}",
        out.took
    );
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
    let mut s = TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    s.write_all(b"POST /v1/fake HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"op\"")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
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

/// Reads one response off `s` (head and a Content-Length body) within `limit`.
fn read_response(s: &mut TcpStream, limit: Duration) -> (u16, String) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = vec![];
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (
                    code,
                    String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into(),
                );
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => panic!(
                "closed before a whole response: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "no response within {limit:?}: {e}; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

#[test]
fn each_service_has_its_own_body_limit_said_in_json_from_the_head() {
    let env = Env::new();
    env.config(&format!(
        "{}{}",
        env.worker("small", "workers = 1\nmax_frame = \"8KiB\""),
        env.worker("big", "workers = 1")
    ));
    env.start_ok();
    // The largest body a frame of 8 KiB carries to `echo` with this content type
    // (type, id, deadline, "echo" and "text/plain" as str16s) is accepted, one
    // byte more is refused with the JSON error naming the limit and its setting.
    let limit = 8192 - (1 + 8 + 4 + 2 + 4 + 2 + 10);
    let ok =
        crate::harness::post(env.port, "/v1/small/echo", "text/plain", &vec![b'x'; limit]).unwrap();
    assert_eq!(ok.code, 200, "{}", ok.text());
    assert_eq!(ok.body.len(), limit);
    let r = crate::harness::post(
        env.port,
        "/v1/small/echo",
        "text/plain",
        &vec![b'x'; limit + 1],
    )
    .unwrap();
    assert_eq!(r.code, 413, "{}", r.text());
    let v = r.json();
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains(&limit.to_string()) && e.contains("services.small.max_frame"),
        "{v}"
    );
    assert_eq!(v["service"], "small");
    assert_eq!(v["cause"]["limit"], limit);
    // The other service's larger limit is its own, not every route's.
    let r =
        crate::harness::post(env.port, "/v1/big/echo", "text/plain", &vec![b'x'; 20_000]).unwrap();
    assert_eq!(r.code, 200, "{}", r.text());
    // A declared length over the limit is refused from the head: no body is waited
    // for (body_timeout is 60 s).
    let mut s = TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    s.write_all(b"POST /v1/small/echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 10000000\r\n\r\nxx")
        .unwrap();
    let t = Instant::now();
    let (code, body) = read_response(&mut s, Duration::from_secs(5));
    assert_eq!(code, 413, "{body}");
    assert!(
        body.contains("10000000 bytes") && body.contains("max_frame"),
        "{body}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The same for a job.
    let mut s = TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    s.write_all(b"POST /v1/jobs/small/echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 10000000\r\n\r\nxx")
        .unwrap();
    let (code, body) = read_response(&mut s, Duration::from_secs(5));
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("services.small.max_frame"), "{body}");
    // A chunked body that grows past the limit is refused once it does.
    let mut s = TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    s.write_all(b"POST /v1/small/echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    // Two chunks of 4 KiB pass the limit; nothing more is sent, so the gateway's
    // answer is read before it closes (a write after its answer may meet a closed
    // connection, and is no part of the test).
    let chunk = vec![b'y'; 4096];
    for _ in 0..2 {
        write!(s, "{:x}\r\n", chunk.len()).unwrap();
        s.write_all(&chunk).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    let (code, body) = read_response(&mut s, Duration::from_secs(5));
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("at least"), "{body}");
    // The workers were never touched.
    assert_eq!(
        call(env.port, "small", &json!({"op": "echo", "n": 1})).code,
        200
    );
    env.stop_ok();
}

/// Pauses the daemon (SIGSTOP) while its worker answers a 0.3 s request, keeps it
/// paused until past the 2 s deadline, then resumes it (SIGCONT): what a VM freeze,
/// a laptop's sleep or heavy swapping does.
fn pause_past_the_deadline(env: &Env, mark: &std::path::Path) {
    let end = mark.with_extension("end");
    let start = mark.with_extension("start");
    wait_until(
        Duration::from_secs(10),
        "the worker to start the request",
        || start.exists().then_some(()),
    );
    // The request was dispatched, and its 2 s deadline set, before this moment.
    let started = Instant::now();
    let pid = env.daemon_pid();
    crate::harness::kill(pid, 19); // SIGSTOP
    wait_until(Duration::from_secs(10), "the worker to answer", || {
        end.exists().then_some(())
    });
    // The deadline passes while the daemon cannot run.
    wait_until(Duration::from_secs(10), "the deadline to pass", || {
        (started.elapsed() > Duration::from_millis(2500)).then_some(())
    });
    crate::harness::kill(pid, 18); // SIGCONT
}

#[test]
fn a_paused_daemon_does_not_kill_a_worker_whose_answer_arrived() {
    let env = Env::new();
    env.config(&env.worker(
        "fake",
        "workers = 1\nrequest_timeout = \"2s\"\njobs_share = 1.0",
    ));
    env.start_ok();
    let pid = env.status()["services"][0]["workers"][0]["pid"].clone();
    // A request.
    let mark = env.path().join("req.x");
    let body =
        json!({"op": "sleep", "s": 0.3, "mark": mark.with_extension("").display().to_string()});
    let port = env.port;
    let client = std::thread::spawn(move || call(port, "fake", &body));
    pause_past_the_deadline(&env, &mark);
    let r = client.join().unwrap();
    assert_eq!(r.code, 200, "{}", r.text());
    assert_eq!(r.json()["slept"], 0.3);
    // A job: done in one attempt, not failed by a deadline and run again.
    let mark = env.path().join("job.x");
    let body =
        json!({"op": "sleep", "s": 0.3, "mark": mark.with_extension("").display().to_string()});
    let r = crate::harness::post(
        env.port,
        "/v1/jobs/fake",
        "application/json",
        body.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(r.code, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    pause_past_the_deadline(&env, &mark);
    let job = wait_until(Duration::from_secs(10), "the job to finish", || {
        let (_, b) = env.get(&format!("/v1/jobs/{id}"))?;
        let v: serde_json::Value = serde_json::from_str(&b).ok()?;
        (v["state"] == "done" || v["state"] == "dead").then_some(v)
    });
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    // The healthy worker was never killed.
    let w = &env.status()["services"][0]["workers"][0];
    assert_eq!(w["pid"], pid, "{w}");
    assert_eq!(w["restarts"], 0, "{w}");
    env.stop_ok();
}

#[test]
fn stop_does_not_wait_for_a_client_still_sending_its_body() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    let mut s = TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    // `Expect: 100-continue` makes the gateway say when its handler starts reading
    // the body: from then on the request is in a handler, waiting for 95 bytes more.
    s.write_all(b"POST /v1/fake HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"{\"op\"").unwrap();
    let out = env.run(&["stop"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.took < Duration::from_secs(5),
        "stop took {:?}",
        out.took
    );
    assert!(closed_within(&mut s, Duration::from_secs(1)));
    env.assert_nothing_left();
}

const LEAKY_WORKER: &str = r#"
import os
import paddock

class Leaky:
    @paddock.handler
    def raises(self, req):
        raise RuntimeError("always fails SECRET_IN_EXCEPTION")

    @paddock.handler
    def crash(self, req):
        os.kill(os.getpid(), 11)

paddock.serve(Leaky())
"#;

/// Issue: a crash's 502 carried ~20 of the worker's log lines, other requests'
/// tracebacks among them; so did the history of a job whose worker crashed.
#[test]
fn a_crash_shows_clients_no_log_lines_unless_expose_errors() {
    for expose in [false, true] {
        let mut env = Env::new();
        if expose {
            env.instance_extra = "expose_errors = true\n".into();
        }
        let file = env.path().join("leaky.py");
        std::fs::write(&file, LEAKY_WORKER).unwrap();
        let sdk = format!("{}/../../sdk/python", env!("CARGO_MANIFEST_DIR"));
        env.config(&format!(
            "[services.w]\ncommand = [\"python3\", {:?}]\nenv = {{ PYTHONPATH = {sdk:?} }}\nworkers = 2\njobs_share = 1.0\nmax_attempts = 1\n",
            file.display().to_string()
        ));
        env.start_ok();
        let post =
            |path: &str| crate::harness::post(env.port, path, "application/json", b"{}").unwrap();
        for _ in 0..4 {
            let r = post("/v1/w/raises");
            assert_eq!(r.code, 500, "{}", r.text());
            assert_eq!(
                r.text().contains("SECRET_IN_EXCEPTION"),
                expose,
                "{}",
                r.text()
            );
        }
        let r = post("/v1/w/crash");
        assert_eq!(r.code, 502, "{}", r.text());
        let v = r.json();
        assert_eq!(v["cause"]["signal"], "SIGSEGV", "{v}");
        let id = v["cause"]["error_id"].as_str().unwrap().to_string();
        if expose {
            assert!(v["cause"]["log_tail"].is_array(), "{v}");
        } else {
            assert!(!r.text().contains("SECRET_IN_EXCEPTION"), "{}", r.text());
            assert!(!r.text().contains("Traceback"), "{}", r.text());
            assert!(v["cause"].get("log_tail").is_none(), "{v}");
            assert!(
                v["cause"]["log"]
                    .as_str()
                    .unwrap()
                    .contains("paddock logs w"),
                "{v}"
            );
        }
        // A job whose worker crashes: its history is no window on the log either.
        let r = post("/v1/jobs/w/crash");
        assert_eq!(r.code, 202, "{}", r.text());
        let jid = r.json()["id"].as_str().unwrap().to_string();
        let job = wait_until(Duration::from_secs(20), "the job to die", || {
            let (_, b) = env.get(&format!("/v1/jobs/{jid}"))?;
            let v: serde_json::Value = serde_json::from_str(&b).ok()?;
            (v["state"] == "dead").then_some(v)
        });
        let detail = &job["history"][0]["cause"]["detail"];
        assert!(detail["error_id"].is_string(), "{job}");
        assert_eq!(detail["log_tail"].is_array(), expose, "{job}");
        if !expose {
            let text = job.to_string();
            assert!(
                !text.contains("SECRET_IN_EXCEPTION") && !text.contains("Traceback"),
                "{job}"
            );
        }
        // The operator still has every line, and the error id after them.
        let logs = env.run(&["logs", "w", "-n", "500"]);
        assert!(logs.stdout.contains("SECRET_IN_EXCEPTION"), "{logs:?}");
        assert!(logs.stdout.contains(&format!("error {id}:")), "{logs:?}");
        env.stop_ok();
    }
}
