//! What a hostile client or an unlucky moment must not get: a body over its
//! service's limit (refused from the head, in JSON), a paused daemon killing a
//! worker whose answer had arrived, a stop held up by a client still sending, and
//! a crash's answer showing other requests' log lines.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::hardening::{closed_within, sent, stop_at_once};
use crate::harness::{Env, call, wait_until};

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
    // `Expect: 100-continue` makes the gateway say when its handler starts reading
    // the body: from then on the request is in a handler, waiting for 95 bytes more.
    let (mut s, text) = sent(
        env.port,
        b"POST /v1/fake HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 100"), "{text:?}");
    s.write_all(b"{\"op\"").unwrap();
    stop_at_once(&env);
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

/// A crash's 502 must not carry the worker's last log lines (other requests'
/// tracebacks among them), nor may the history of a job whose worker crashed.
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
