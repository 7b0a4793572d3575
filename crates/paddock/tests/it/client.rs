//! The Python client (`paddock.Client`, `paddock.AsyncClient`) against a real daemon:
//! every method and typed error, streams cancelled by closing them, jobs awaited
//! through the long-poll (`fixtures/client_check.py` does the checking).

use std::process::Command;

use crate::harness::{Env, fixture, json_report};

#[test]
fn the_python_client_calls_streams_and_waits_for_jobs() {
    let mut env = Env::new();
    env.instance_extra = "auth_token = \"client-test-token\"\n".into();
    let streams = env.worker_with("streams", "stream_worker.py", &[], "workers = 1");
    env.config(&format!(
        "{}{}{streams}",
        env.worker("fake", "workers = 2\nrequest_timeout = \"3s\""),
        env.worker("tiny", "workers = 1\nmax_queue = 0"),
    ));
    env.start_ok();
    let marks = env.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let sdk = format!("{}/../../sdk/python", env!("CARGO_MANIFEST_DIR"));
    let report = json_report(
        Command::new("python3")
            .arg(fixture("client_check.py"))
            .arg(format!("http://127.0.0.1:{}", env.port))
            .arg("client-test-token")
            .arg(&marks)
            .env("PYTHONPATH", sdk)
            .env_remove("PADDOCK_URL")
            .env_remove("PADDOCK_TOKEN"),
    );
    assert_eq!(report["ok"], true, "{report}");
    eprintln!("client report: {report}");
    env.stop_ok();
    env.assert_nothing_left();
}
