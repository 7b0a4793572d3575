//! Streamed answers (issue 11): chunks as the worker makes them, SSE framing,
//! cancellation when the client leaves, backpressure, and failures that never look
//! like a complete answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Env, post, wait_until};

/// A streamed HTTP answer, read as it arrives (chunked transfer encoding).
struct Stream {
    r: BufReader<TcpStream>,
    code: u16,
    headers: Vec<(String, String)>,
}

impl Stream {
    fn open(port: u16, path: &str, extra_headers: &str, body: &Value) -> Stream {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let body = body.to_string();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let code = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut headers = vec![];
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        Stream { r, code, headers }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next chunk's data; `Ok(None)` at the terminating zero-length chunk; an
    /// error when the body was cut off.
    fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("cut off before a chunk"));
        }
        let size = usize::from_str_radix(line.trim_end(), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
        let mut data = vec![0; size + 2];
        self.r.read_exact(&mut data)?;
        data.truncate(size);
        Ok((size > 0).then_some(data))
    }

    /// Everything left, and whether the body ended with its terminator.
    fn rest(&mut self) -> (Vec<u8>, bool) {
        let mut all = vec![];
        loop {
            match self.next_chunk() {
                Ok(Some(d)) => all.extend(d),
                Ok(None) => return (all, true),
                Err(_) => return (all, false),
            }
        }
    }
}

fn streams(env: &Env, extra: &str) -> String {
    env.worker_with("s", "stream_worker.py", &[], extra)
}

fn worker0(env: &Env) -> Value {
    env.status()["services"][0]["workers"][0].clone()
}

#[test]
fn each_chunk_reaches_the_client_before_the_next_is_made() {
    let env = Env::new();
    env.config(&streams(&env, ""));
    env.start_ok();
    let gate = env.path().join("gate");
    std::fs::create_dir(&gate).unwrap();
    let mut s = Stream::open(
        env.port,
        "/v1/s/count",
        "",
        &json!({"n": 100, "gate": gate.to_str().unwrap()}),
    );
    assert_eq!(s.code, 200);
    assert_eq!(s.header("transfer-encoding"), Some("chunked"));
    assert_eq!(s.header("content-type"), Some("text/plain; charset=utf-8"));
    // The worker makes chunk i+1 only after the test saw chunk i: had the daemon held
    // chunks back, this would wait for ever (and time out).
    for i in 0..100 {
        let chunk = s.next_chunk().unwrap().expect("a chunk, not the end");
        assert_eq!(String::from_utf8(chunk).unwrap(), format!("{i}\n"));
        std::fs::write(gate.join(format!("seen-{i}")), b"").unwrap();
    }
    assert_eq!(s.next_chunk().unwrap(), None, "the stream ends complete");
    assert_eq!(
        env.metric("paddock_streams_total{service=\"s\",outcome=\"done\"}"),
        1.0
    );
    env.stop_ok();
}

#[test]
fn a_client_that_leaves_cancels_the_stream_and_the_worker_serves_on() {
    let env = Env::new();
    env.config(&streams(&env, "cancel_grace = \"500ms\""));
    env.start_ok();
    let first = worker0(&env);
    let dir = env.path().to_str().unwrap().to_string();
    let mut s = Stream::open(env.port, "/v1/s/forever", "", &json!({"dir": dir}));
    for _ in 0..3 {
        assert!(s.next_chunk().unwrap().is_some());
    }
    drop(s);
    // The handler's finally ran in the same worker, which serves the next request.
    let marker = env.path().join(format!("finally-{}", first["pid"]));
    wait_until(Duration::from_secs(10), "the generator's finally", || {
        marker.exists().then_some(())
    });
    let r = post(env.port, "/v1/s/plain", "application/json", b"{}").unwrap();
    assert_eq!(r.code, 200);
    assert_eq!(r.json()["pid"], first["pid"], "the worker was replaced");
    assert_eq!(worker0(&env)["generation"], first["generation"]);
    assert_eq!(
        env.metric("paddock_streams_total{service=\"s\",outcome=\"cancelled\"}"),
        1.0
    );

    // A handler that ignores the cancellation is killed after cancel_grace.
    let mut s = Stream::open(env.port, "/v1/s/stubborn", "", &json!({}));
    assert!(s.next_chunk().unwrap().is_some());
    drop(s);
    let t = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the stubborn worker replaced",
        || {
            let w = worker0(&env);
            (w["generation"] == 2 && w["state"] == "ready").then_some(())
        },
    );
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    env.stop_ok();
    env.assert_nothing_left();
}

/// A hand parser of Server-Sent Events (the WHATWG spec's rules that apply here):
/// (event name, data) per event.
fn sse_events(text: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let (mut event, mut data): (String, Vec<String>) = (String::new(), vec![]);
    for line in text.split('\n') {
        if line.is_empty() {
            if !data.is_empty() || !event.is_empty() {
                let name = if event.is_empty() {
                    "message".into()
                } else {
                    event.clone()
                };
                out.push((name, data.join("\n")));
            }
            event.clear();
            data.clear();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        }
    }
    out
}

#[test]
fn server_sent_events_carry_chunks_then_done_or_error() {
    let env = Env::new();
    env.config(&streams(&env, ""));
    env.start_ok();
    let accept = "Accept: text/event-stream\r\n";
    let mut s = Stream::open(env.port, "/v1/s/count", accept, &json!({"n": 3}));
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let (body, complete) = s.rest();
    assert!(complete);
    let events = sse_events(&String::from_utf8(body).unwrap());
    assert_eq!(
        events,
        vec![
            ("message".to_string(), "0".to_string()),
            ("message".into(), "1".into()),
            ("message".into(), "2".into()),
            ("done".into(), "".into()),
        ]
    );
    // A handler that raises mid-stream: its chunks, then an error event, never done.
    let mut s = Stream::open(env.port, "/v1/s/fail_after", accept, &json!({}));
    let (body, _) = s.rest();
    let events = sse_events(&String::from_utf8(body).unwrap());
    assert_eq!(events[0], ("message".to_string(), "a".to_string()));
    assert_eq!(events[1], ("message".to_string(), "b".to_string()));
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2].0, "error");
    let v: Value = serde_json::from_str(&events[2].1).unwrap();
    assert_eq!(v["cause"]["kind"], "handler_error", "{v}");
    assert!(
        !events[2].1.contains("the model broke"),
        "no message without expose_errors"
    );
    env.stop_ok();
}

#[test]
fn a_crash_or_a_silent_worker_mid_stream_is_a_failed_stream() {
    let env = Env::new();
    env.config(&streams(&env, "stream_idle_timeout = \"400ms\""));
    env.start_ok();
    // A handler that raises right after its chunks: the head and the chunks reach
    // the client before the cut (not a connection closed with no answer).
    let mut s = Stream::open(env.port, "/v1/s/fail_after", "", &json!({}));
    let (body, complete) = s.rest();
    assert_eq!(body, b"a\nb\n");
    assert!(!complete, "a failed stream ended like a complete one");
    // Chunked: the body is cut off, never terminated.
    let mut s = Stream::open(env.port, "/v1/s/crash_after", "", &json!({"n": 5}));
    let (body, complete) = s.rest();
    assert_eq!(body, b"0\n1\n2\n3\n4\n");
    assert!(!complete, "a crashed stream ended like a complete one");
    // SSE: an error event naming the signal.
    wait_until(Duration::from_secs(10), "the replacement", || {
        (worker0(&env)["state"] == "ready").then_some(())
    });
    let mut s = Stream::open(
        env.port,
        "/v1/s/crash_after",
        "Accept: text/event-stream\r\n",
        &json!({"n": 5}),
    );
    let text = String::from_utf8(s.rest().0).unwrap();
    let events = sse_events(&text);
    let last = events.last().unwrap();
    assert_eq!(last.0, "error", "{events:?}");
    assert!(last.1.contains("SIGSEGV"), "{}", last.1);
    // A worker silent for stream_idle_timeout is killed; the stream is cut off.
    wait_until(Duration::from_secs(10), "the replacement", || {
        (worker0(&env)["state"] == "ready").then_some(())
    });
    let before = worker0(&env)["generation"].as_u64().unwrap();
    let t = Instant::now();
    let mut s = Stream::open(env.port, "/v1/s/silent", "", &json!({}));
    let (body, complete) = s.rest();
    assert_eq!(body, b"one\n");
    assert!(!complete);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    wait_until(
        Duration::from_secs(10),
        "the silent worker replaced",
        || (worker0(&env)["generation"].as_u64().unwrap() > before).then_some(()),
    );
    env.stop_ok();
}

#[test]
fn readers_that_stop_reading_are_dropped_and_the_service_answers_again() {
    let env = Env::new();
    env.config(&streams(
        &env,
        "workers = 2\nstream_write_timeout = \"500ms\"",
    ));
    env.start_ok();
    let pids: Vec<Value> = env.status()["services"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].clone())
        .collect();
    // Two clients ask for a lot and read nothing: every worker is streaming to one.
    let stalled: Vec<Stream> = (0..2)
        .map(|_| {
            Stream::open(
                env.port,
                "/v1/s/fast",
                "",
                &json!({"n": 100000, "size": 4096}),
            )
        })
        .collect();
    // They are dropped after stream_write_timeout; the workers live on and serve.
    wait_until(
        Duration::from_secs(15),
        "both stalled streams cancelled",
        || {
            (env.metric("paddock_streams_total{service=\"s\",outcome=\"cancelled\"}") == 2.0)
                .then_some(())
        },
    );
    let r = post(env.port, "/v1/s/plain", "application/json", b"{}").unwrap();
    assert_eq!(r.code, 200, "{}", r.text());
    let now: Vec<Value> = env.status()["services"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].clone())
        .collect();
    assert_eq!(now, pids, "a stalled reader cost a worker");
    drop(stalled);
    env.stop_ok();
}

#[test]
fn a_job_to_a_streaming_handler_stores_the_whole_stream() {
    let env = Env::new();
    env.config(&streams(&env, ""));
    env.start_ok();
    let r = post(
        env.port,
        "/v1/jobs/s/count",
        "application/json",
        json!({"n": 5}).to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(r.code, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(10), "the job done", || {
        let (_, body) = env.get(&format!("/v1/jobs/{id}"))?;
        (serde_json::from_str::<Value>(&body).ok()?["state"] == "done").then_some(())
    });
    let (code, body) = env.get(&format!("/v1/jobs/{id}/result")).unwrap();
    assert_eq!(code, 200);
    assert_eq!(body, "0\n1\n2\n3\n4\n");
    // A stream that fails is a failed attempt, not a result.
    let r = post(env.port, "/v1/jobs/s/fail_after", "application/json", b"{}").unwrap();
    let id = r.json()["id"].as_str().unwrap().to_string();
    let job = wait_until(Duration::from_secs(30), "the job failed", || {
        let (_, body) = env.get(&format!("/v1/jobs/{id}"))?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["failures"].as_u64()? >= 1).then_some(v)
    });
    assert_ne!(job["state"], "done", "{job}");
    env.stop_ok();
}

#[test]
fn thirty_two_slow_readers_cost_the_daemon_little_memory_and_no_worker() {
    let env = Env::new();
    env.config(&streams(&env, "workers = 32\nstartup_timeout = \"120s\""));
    env.start_ok();
    let before = env.daemon_rss_kib();
    let port = env.port;
    let (done_tx, done) = std::sync::mpsc::channel();
    for _ in 0..32 {
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let mut s = Stream::open(port, "/v1/s/fast", "", &json!({"n": 400, "size": 8192}));
            let mut got = 0;
            // A slow reader: a chunk, then a pause (the worker makes them far faster).
            while let Ok(Some(c)) = s.next_chunk() {
                got += c.len();
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = done_tx.send(got);
        });
    }
    // The daemon's memory, sampled while the readers run (every 20 ms of waiting
    // for the next reader to finish).
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut finished = 0;
    while finished < 32 {
        peak = peak.max(env.daemon_rss_kib());
        match done.recv_timeout(Duration::from_millis(20)) {
            Ok(got) => {
                assert_eq!(got, 400 * 8192, "a reader lost data");
                finished += 1;
            }
            Err(_) => assert!(Instant::now() < deadline, "the readers did not finish"),
        }
    }
    let grew_mib = (peak.saturating_sub(before)) as f64 / 1024.0;
    eprintln!("daemon RSS {before} KiB before, {peak} KiB at the peak (+{grew_mib:.1} MiB)");
    assert!(grew_mib < 20.0, "the daemon grew by {grew_mib:.1} MiB");
    let restarts: u64 = env.status()["services"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["restarts"].as_u64().unwrap())
        .sum();
    assert_eq!(restarts, 0, "a slow reader cost a worker");
    env.stop_ok();
}

/// examples/tts: espeak-ng's speech, streamed as it is made (needs espeak-ng, which
/// .ci/test installs; without it the worker's setup fails and so does this test).
#[test]
fn the_tts_example_streams_a_playable_wav() {
    let env = Env::new();
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    env.config(&format!(
        "[services.tts]\ncommand = [\"python3\", \"{root}/examples/tts/worker.py\"]\nenv = {{ PYTHONPATH = \"{root}/sdk/python\" }}\n"
    ));
    env.start_ok();
    let text = "Hello from paddock. This sentence is streamed as it is spoken. \
                And a third one, so that there is more than one piece of audio.";
    let t = Instant::now();
    let mut s = Stream::open(env.port, "/v1/tts/speak", "", &json!({ "text": text }));
    assert_eq!(s.code, 200);
    assert_eq!(s.header("content-type"), Some("audio/wav"));
    let first = s.next_chunk().unwrap().expect("audio");
    let first_byte = t.elapsed();
    assert_eq!(&first[..4], b"RIFF");
    assert_eq!(&first[8..12], b"WAVE");
    let (rest, complete) = s.rest();
    assert!(complete);
    let total = first.len() + rest.len();
    eprintln!(
        "tts: first byte after {first_byte:?}, {total} bytes in {:?}",
        t.elapsed()
    );
    // 16-bit mono at 22,050 Hz: three sentences are seconds of audio.
    assert!(total > 100_000, "{total} bytes");
    // An empty text is the client's mistake: 400 before any audio.
    let r = post(
        env.port,
        "/v1/tts/speak",
        "application/json",
        b"{\"text\": \"\"}",
    )
    .unwrap();
    assert_eq!(r.code, 400, "{}", r.text());
    env.stop_ok();
}

#[test]
fn a_stalled_reader_is_not_the_workers_silence_but_request_timeout_bounds_the_stream() {
    let env = Env::new();
    env.config(&streams(
        &env,
        "stream_idle_timeout = \"300ms\"\nrequest_timeout = \"3s\"",
    ));
    env.start_ok();
    // The reader takes nothing for a second (over three stream_idle_timeouts): the
    // worker blocks in yield, which is backpressure, not silence.
    let mut s = Stream::open(
        env.port,
        "/v1/s/fast",
        "",
        &json!({"n": 2000, "size": 4096}),
    );
    let first = s.next_chunk().unwrap().expect("a chunk");
    std::thread::sleep(Duration::from_secs(1));
    let (rest, complete) = s.rest();
    assert!(complete, "the stalled stream was cut off");
    // (Chunks that waited while the reader stalled come coalesced.)
    assert_eq!(first.len() + rest.len(), 2000 * 4096, "bytes lost");
    assert_eq!(worker0(&env)["restarts"], 0);
    // request_timeout bounds the whole stream, however lively the worker.
    let t = Instant::now();
    let dir = env.path().to_str().unwrap().to_string();
    let mut s = Stream::open(env.port, "/v1/s/forever", "", &json!({ "dir": dir }));
    let (_, complete) = s.rest();
    assert!(
        !complete,
        "a stream past request_timeout ended like a complete one"
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(8),
        "{took:?}"
    );
    wait_until(Duration::from_secs(10), "the worker replaced", || {
        (worker0(&env)["restarts"] == 1).then_some(())
    });
    env.stop_ok();
}

/// Bounded job payloads: a body over job_max_body is refused with 413 before
/// anything is stored; a result over job_max_result fails the job at once (a retry
/// would make the same result) with a message naming the setting.
#[test]
fn oversized_job_bodies_and_results_are_refused() {
    let env = Env::new();
    env.config(&streams(
        &env,
        "job_max_body = \"1KiB\"\njob_max_result = \"64KiB\"\nmax_attempts = 3\njob_backoff = \"10ms\"",
    ));
    env.start_ok();
    let big = format!("{{\"n\": 1, \"pad\": \"{}\"}}", "x".repeat(2000));
    let r = post(
        env.port,
        "/v1/jobs/s/count",
        "application/json",
        big.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.code, 413, "{}", r.text());
    assert!(r.text().contains("job_max_body"), "{}", r.text());
    let (_, list) = env.get("/v1/jobs").unwrap();
    let v: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        v["jobs"].as_array().unwrap().len(),
        0,
        "something was stored: {v}"
    );
    // 100 chunks of 4 KiB: a 400 KiB result, over 64 KiB.
    let body = json!({"n": 100, "size": 4096}).to_string();
    let r = post(
        env.port,
        "/v1/jobs/s/fast",
        "application/json",
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.code, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let job = wait_until(Duration::from_secs(10), "the attempt to fail", || {
        let (_, b) = env.get(&format!("/v1/jobs/{id}"))?;
        let v: Value = serde_json::from_str(&b).ok()?;
        (v["state"] == "dead").then_some(v)
    });
    let cause = job["history"][0]["cause"].to_string();
    assert!(cause.contains("job_max_result"), "{job}");
    assert_eq!(
        job["history"][0]["cause"]["kind"], "result_too_large",
        "{job}"
    );
    // One attempt of three: it was not retried.
    assert_eq!(job["attempts"], 1, "{job}");
    assert_eq!(job["history"].as_array().unwrap().len(), 1, "{job}");
    env.stop_ok();
}
