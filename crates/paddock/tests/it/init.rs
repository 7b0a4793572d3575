//! `paddock init`: each template gives a service that starts and answers as written,
//! and nothing is ever overwritten.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Env, http_get, post, wait_until};

/// An environment whose workers import the repository's SDK and whose state lives
/// in its folder (the config `init` writes names no state_dir).
fn env() -> Env {
    let mut env = Env::new();
    let sdk = format!("{}/../../sdk/python", env!("CARGO_MANIFEST_DIR"));
    env.extra_env = vec![
        ("PYTHONPATH".into(), sdk),
        (
            "XDG_STATE_HOME".into(),
            env.path().join("state").display().to_string(),
        ),
    ];
    env
}

/// `paddock --port P init <env's folder> --template T --json`: its report.
fn init(env: &Env, template: &str) -> Value {
    let dir = env.path().display().to_string();
    let port = env.port.to_string();
    let out = env.run(&[
        "--port",
        &port,
        "init",
        &dir,
        "--template",
        template,
        "--python",
        "python3",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap()
}

#[test]
fn each_template_starts_and_answers_as_written() {
    for template in ["basic", "batch", "stream", "jobs"] {
        let env = env();
        let made = init(&env, template);
        let name = made["service"].as_str().unwrap().to_string();
        assert_eq!(made["template"], template);
        assert_eq!(made["sdk"]["ok"], true, "{made}");
        assert_eq!(made["sdk"]["fit"], "same", "{made}");
        assert_eq!(made["files"].as_array().unwrap().len(), 2);
        assert!(
            made["call"]
                .as_str()
                .unwrap()
                .contains(&format!("localhost:{}/v1/", env.port)),
            "{made}"
        );
        assert_eq!(env.run(&["check"]).code, 0, "{template}: check");
        env.start_ok();
        let json = "application/json";
        match template {
            "basic" => {
                let r = post(
                    env.port,
                    &format!("/v1/{name}"),
                    json,
                    br#"{"text": "what a wonderful day"}"#,
                )
                .unwrap();
                assert_eq!(r.code, 200, "{}", r.text());
                assert_eq!(r.json()["label"], "positive");
                assert_eq!(r.json()["words"], 4);
                let bad = post(env.port, &format!("/v1/{name}"), json, b"{}").unwrap();
                assert_eq!(bad.code, 400, "{}", bad.text());
            }
            "batch" => {
                let r = post(env.port, &format!("/v1/{name}"), json, br#"{"text": "x"}"#).unwrap();
                assert_eq!(r.code, 200, "{}", r.text());
                assert_eq!(r.json()["vector"].as_array().unwrap().len(), 8);
            }
            "stream" => {
                let r = post(
                    env.port,
                    &format!("/v1/{name}"),
                    json,
                    br#"{"prompt": "one word at a time"}"#,
                )
                .unwrap();
                assert_eq!(r.code, 200, "{}", r.text());
                let text = r.text();
                let words: Vec<&str> = ["time", "a", "at", "word", "one"]
                    .into_iter()
                    .filter(|w| text.contains(&format!("{w}\n")))
                    .collect();
                assert_eq!(words.len(), 5, "{text}");
            }
            "jobs" => {
                let r = post(
                    env.port,
                    &format!("/v1/jobs/{name}"),
                    json,
                    br#"{"text": "a long document to ingest"}"#,
                )
                .unwrap();
                assert_eq!(r.code, 202, "{}", r.text());
                let id = r.json()["id"].as_str().unwrap().to_string();
                let done = wait_until(Duration::from_secs(20), "the job done", || {
                    let (_, body) = http_get(env.port, &format!("/v1/jobs/{id}"))?;
                    let v: Value = serde_json::from_str(&body).ok()?;
                    (v["state"] == "done").then_some(v)
                });
                assert_eq!(done["attempts"], 1, "{done}");
                let (code, result) = http_get(env.port, &format!("/v1/jobs/{id}/result")).unwrap();
                assert_eq!(code, 200, "{result}");
                let result: Value = serde_json::from_str(&result).unwrap();
                assert_eq!(result["chunks"], 1, "{result}");
            }
            _ => unreachable!(),
        }
        let status = env.status();
        assert_eq!(status["services"][0]["name"], name.as_str());
        assert_eq!(status["services"][0]["state"], "ready");
        env.stop_ok();
        env.assert_nothing_left();
    }
}

#[test]
fn init_never_overwrites_and_says_how_to_install_a_missing_sdk() {
    let env = env();
    std::fs::write(env.path().join("worker.py"), "# mine\n").unwrap();
    let dir = env.path().display().to_string();
    let out = env.run(&["init", &dir]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("worker.py already exists"), "{out:?}");
    assert!(!env.config_path().exists(), "nothing is written");
    assert_eq!(
        std::fs::read_to_string(env.path().join("worker.py")).unwrap(),
        "# mine\n"
    );

    // An interpreter that cannot import paddock: the files are written, and the
    // warning names the install command for that interpreter.
    let other = env.path().join("other");
    let broken = env.path().join("broken/paddock");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("__init__.py"), "raise ImportError('no')\n").unwrap();
    let mut cmd = env.command(&["init", &other.display().to_string(), "--python", "python3"]);
    cmd.env("PYTHONPATH", env.path().join("broken"));
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("cannot import paddock"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "python3 -m pip install 'paddock-serve=={}'",
            env!("CARGO_PKG_VERSION")
        )),
        "{stderr}"
    );
    assert!(other.join("paddock.toml").is_file() && other.join("worker.py").is_file());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("cd {} && paddock run", other.display())),
        "{stdout}"
    );
}
