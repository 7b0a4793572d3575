//! The examples that run real models, tested with the real libraries from
//! .venv-test (pinned in crates/paddock/tests/python/requirements*.txt).

use std::process::Command;

use serde_json::Value;

use crate::harness::{Env, test_python};

/// examples/embeddings through the official openai client: sentence-transformers'
/// published similarity matrix to 3 decimals, base64 and float, usage, 400s.
#[test]
fn the_embeddings_example_answers_the_openai_client_like_sentence_transformers() {
    let env = Env::new();
    let python = test_python(
        "import numpy, tokenizers, safetensors, openai, importlib.util as u; assert u.find_spec('all_minilm_l6_v2')",
    );
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    env.config(&format!(
        "[services.embeddings]\ncommand = [{python:?}, \"{root}/examples/embeddings/worker.py\"]\nworkers = 2\nenv = {{ PYTHONPATH = \"{root}/sdk/python:{root}/examples/embeddings\" }}\n"
    ));
    env.start_ok();
    let report = crate::harness::json_report(
        Command::new(&python)
            .arg(format!(
                "{root}/crates/paddock/tests/python/embeddings_client.py"
            ))
            .arg(env.port.to_string()),
    );
    for fmt in ["base64", "float"] {
        assert_eq!(report[fmt]["dims"], 384, "{report}");
        assert!(
            report[fmt]["max_error"].as_f64().unwrap() < 5e-4,
            "{report}"
        );
        // [CLS] … [SEP] of the three sentences: 8 + 9 + 8 tokens.
        assert_eq!(report[fmt]["prompt_tokens"], 25, "{report}");
    }
    assert_eq!(report["single"], 1);
    assert_eq!(report["token_ids"], 400, "{report}");
    env.stop_ok();
}

/// examples/search: FAISS (OpenMP) under paddock answers nearest-neighbour queries,
/// and its workers get the config's thread settings whether the daemon was started
/// with `start` or `run`, whatever the shell that started it says.
#[test]
fn the_search_example_runs_faiss_with_the_configs_threads_under_start_and_run() {
    let python = test_python("import faiss, numpy");
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    let config = format!(
        "[services.search]\ncommand = [{python:?}, \"{root}/examples/search/worker.py\"]\nworkers = 2\nenv = {{ PYTHONPATH = \"{root}/sdk/python\", OMP_NUM_THREADS = \"1\" }}\n"
    );
    let post = |port: u16, path: &str, body: &str| {
        crate::harness::post(port, path, "application/json", body.as_bytes()).unwrap()
    };
    // Detached (`start`), with a shell that says otherwise.
    let env = Env::new();
    env.config(&config);
    let out = env
        .command(&["start"])
        .env("OMP_NUM_THREADS", "16")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let r = post(env.port, "/v1/search/search", r#"{"id": 1234, "k": 3}"#);
    assert_eq!(r.code, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["ids"][0], 1234, "{v}");
    assert_eq!(v["distances"][0], 0.0, "{v}");
    let started = post(env.port, "/v1/search/info", "{}").json();
    assert_eq!(started["env"]["OMP_NUM_THREADS"], "1", "{started}");
    assert_eq!(started["faiss_omp_threads"], 1, "{started}");
    env.stop_ok();

    // In the foreground (`run`): the same settings reach the workers.
    let env = Env::new();
    env.config(&config);
    let mut child = env
        .command(&["run"])
        .env("OMP_NUM_THREADS", "16")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The initial start is over when the daemon says the instance is ready (a stop
    // before that is an interrupted start, exit 1); its log goes to stderr.
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut log = vec![];
    while !log.iter().any(|l: &String| l.contains(" ready on http")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => panic!(
                "the foreground daemon never became ready:\n{}",
                log.join("\n")
            ),
        }
    }
    let info = post(env.port, "/v1/search/info", "{}").json();
    assert_eq!(info["env"], started["env"], "run and start differ");
    assert_eq!(info["faiss_omp_threads"], 1, "{info}");
    env.stop_ok();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    log.extend(lines.try_iter());
    assert!(status.success(), "{status:?}: {}", log.join("\n"));
}

/// The SDK's fork guard: a fork-start Pool after FAISS ran OpenMP is reported
/// (service log, status, metrics) and its hang ends in 504; the same work with
/// forkserver and a guarded module works, and reports no fork.
#[test]
fn a_fork_with_openmp_threads_is_reported_and_forkserver_works() {
    let python = test_python("import faiss, numpy");
    let env = Env::new();
    env.config(
        &env.worker_with(
            "forks",
            "fork_worker.py",
            &[("OMP_NUM_THREADS", "2")],
            "request_timeout = \"4s\"",
        )
        .replace("\"python3\"", &format!("{python:?}")),
    );
    env.start_ok();
    let post =
        |path: &str| crate::harness::post(env.port, path, "application/json", b"{}").unwrap();
    let threads = post("/v1/forks/threads").json()["os_threads"]
        .as_u64()
        .unwrap();
    assert!(threads > 1, "FAISS started no OpenMP thread ({threads})");
    // The fork-start Pool's children hang on libgomp: the request ends at its deadline.
    let r = post("/v1/forks/fork_pool");
    assert_eq!(r.code, 504, "{}", r.text());
    let w = &env.status()["services"][0]["workers"][0];
    assert!(w["forks_with_threads"].as_u64().unwrap() >= 1, "{w}");
    let last = w["last_fork"].as_str().unwrap();
    assert!(last.contains("fork_worker.py"), "the call site: {last}");
    assert!(env.metric("paddock_fork_warnings_total{service=\"forks\"}") >= 1.0);
    let log = std::fs::read_to_string(env.state_dir().join("logs/forks.log")).unwrap();
    assert!(log.contains("fork guard"), "{log}");
    assert!(log.contains("OS threads"), "{log}");
    // forkserver: the same work completes, and no fork with threads is reported.
    let before = w["forks_with_threads"].as_u64().unwrap();
    let r = post("/v1/forks/forkserver_pool");
    assert_eq!(r.code, 200, "{}", r.text());
    assert_eq!(r.json()["ids"].as_array().unwrap().len(), 4);
    let w = &env.status()["services"][0]["workers"][0];
    assert_eq!(w["forks_with_threads"].as_u64().unwrap(), before, "{w}");
    env.stop_ok();
    env.assert_nothing_left();
}

/// `paddock doctor` on real libraries: FAISS + scikit-learn share one libgomp
/// (clean); a second, system libgomp loaded by hand is flagged; 4 workers × 8
/// OpenMP threads on this machine's cores are flagged.
#[test]
fn doctor_finds_two_openmp_runtimes_and_oversubscription_and_nothing_in_a_clean_setup() {
    let python = test_python("import faiss, numpy, sklearn");
    let doctor = |env: &Env| {
        let out = env.run(&["doctor", "--json"]);
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}): {out:?}"));
        (out.code, v)
    };
    let service = |env: &Env, vars: &[(&str, &str)], extra: &str| {
        env.worker_with("m", "doctor_worker.py", vars, extra)
            .replace("\"python3\"", &format!("{python:?}"))
    };
    // Clean: one worker, paddock's default thread settings.
    let env = Env::new();
    env.config(&service(&env, &[], ""));
    env.start_ok();
    let (code, v) = doctor(&env);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["clean"], true, "{v:#}");
    let w = &v["workers"][0];
    assert_eq!(w["openmp"].as_array().unwrap().len(), 1, "{w:#}");
    assert!(w["threads"].as_u64().unwrap() > 1, "{w:#}");
    // Who holds the gateway's port: the daemon, named, not killed.
    let daemon = format!("pid {} (", env.daemon_pid());
    let port = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subject"] == "gateway");
    assert!(
        port.is_some_and(|f| f["finding"].as_str().unwrap().contains(&daemon)),
        "{v:#}"
    );
    env.stop_ok();

    // Two OpenMP runtimes in one process: an error, exit 1.
    let env = Env::new();
    env.config(&service(&env, &[("DOCTOR_TWO_RUNTIMES", "1")], ""));
    env.start_ok();
    let (code, v) = doctor(&env);
    assert_eq!(code, 1, "{v:#}");
    let f = &v["findings"][0];
    assert_eq!(f["severity"], "error", "{v:#}");
    assert!(
        f["finding"].as_str().unwrap().contains("2 OpenMP runtimes"),
        "{f:#}"
    );
    assert!(!f["fix"].as_str().unwrap().is_empty());
    env.stop_ok();

    // 4 workers × 8 OpenMP threads on a machine with fewer than 32 cores.
    let env = Env::new();
    env.config(&service(
        &env,
        &[("OMP_NUM_THREADS", "8")],
        "workers = 4\nstartup_timeout = \"120s\"",
    ));
    env.start_ok();
    let (code, v) = doctor(&env);
    if v["cores"].as_u64().unwrap() < 32 {
        assert_eq!(code, 1, "{v:#}");
        let over = v["findings"].as_array().unwrap().iter().find(|f| {
            f["finding"]
                .as_str()
                .unwrap()
                .contains("OpenMP pools total 32 threads")
        });
        assert!(over.is_some(), "{v:#}");
    }
    env.stop_ok();
}

/// The jobs' states, all pages.
fn all_jobs(env: &Env, query: &str) -> Vec<Value> {
    let mut out = vec![];
    let mut after = 0;
    loop {
        let (code, body) = env
            .get(&format!("/v1/jobs?limit=500&after={after}{query}"))
            .unwrap();
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        out.extend(v["jobs"].as_array().unwrap().iter().cloned());
        match v["next"].as_i64() {
            Some(n) => after = n,
            None => return out,
        }
    }
}

/// examples/ingest: 500 documents into ChromaDB through durable jobs, the daemon
/// SIGKILLed mid-way and started again: every job done, exactly 500 documents (the
/// upsert by id absorbs the jobs that ran twice), and a query finds its neighbour.
#[test]
fn the_ingest_example_survives_a_daemon_sigkill_with_an_exact_collection() {
    let python = test_python("import chromadb, numpy, tokenizers, safetensors");
    let env = Env::new();
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    let db = env.path().join("chroma");
    env.config(&format!(
        "[services.ingest]\ncommand = [{python:?}, \"{root}/examples/ingest/worker.py\"]\nworkers = 1\njobs_share = 1.0\nstartup_timeout = \"60s\"\nenv = {{ PYTHONPATH = \"{root}/sdk/python\", INGEST_DB = {:?} }}\n",
        db.to_str().unwrap()
    ));
    env.start_ok();
    let topics = ["rivers", "volcanoes", "bread", "chess", "violins"];
    for i in 0..500 {
        let text = if i == 321 {
            "The quick brown fox jumps over the lazy dog.".to_string()
        } else {
            format!("Note {i} is about {} and item number {i}.", topics[i % 5])
        };
        let body = serde_json::json!({"id": format!("doc-{i}"), "text": text}).to_string();
        let r = crate::harness::post(
            env.port,
            "/v1/jobs/ingest",
            "application/json",
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.code, 202, "{}", r.text());
    }
    // Kill the daemon while the jobs are under way (some done, some still queued).
    let done = crate::harness::wait_until(
        std::time::Duration::from_secs(120),
        "some jobs done",
        || {
            let done = all_jobs(&env, "&state=done").len();
            (done >= 100).then_some(done)
        },
    );
    crate::harness::kill(env.daemon_pid(), 9);
    assert!(
        done < 500,
        "every job was done before the kill: it proved nothing"
    );
    eprintln!("killed the daemon with {done} of 500 jobs done");
    crate::harness::wait_until(
        std::time::Duration::from_secs(10),
        "the lock released",
        || (env.run(&["status"]).code == 4).then_some(()),
    );
    env.start_ok();
    let jobs = crate::harness::wait_until(
        std::time::Duration::from_secs(180),
        "every job done",
        || {
            let all = all_jobs(&env, "");
            (all.len() == 500 && all.iter().all(|j| j["state"] == "done")).then_some(all)
        },
    );
    assert_eq!(jobs.len(), 500);
    let post = |path: &str, body: &str| {
        crate::harness::post(env.port, path, "application/json", body.as_bytes()).unwrap()
    };
    let count = post("/v1/ingest/count", "{}").json();
    assert_eq!(count["count"], 500, "duplicates or losses: {count}");
    let r = post(
        "/v1/ingest/query",
        r#"{"text": "a fast brown fox leaps over a sleepy dog", "k": 3}"#,
    );
    assert_eq!(r.code, 200, "{}", r.text());
    assert_eq!(r.json()["ids"][0], "doc-321", "{}", r.text());
    env.stop_ok();
    env.assert_nothing_left();
}
