//! The SDK meets the daemon it was shipped with: a worker whose SDK speaks a protocol
//! version outside the daemon's range fails its service at once, naming both versions
//! and the fix, instead of restarting in a loop; `status` shows each worker's SDK;
//! `doctor` warns of an older one and errs on one the interpreter cannot import.

use std::time::Duration;

use paddock_protocol::{MIN_VERSION, VERSION};
use serde_json::{Value, json};

use crate::harness::{Env, call, kill, wait_until};

const RELEASE: &str = env!("CARGO_PKG_VERSION");

fn spawns(env: &Env) -> usize {
    std::fs::read_to_string(env.path().join("spawns"))
        .unwrap_or_default()
        .lines()
        .count()
}

fn python3() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_worker_whose_sdk_speaks_another_protocol_fails_start_at_once_naming_both_versions_and_the_fix()
{
    for (protocol, sdk, side) in [(VERSION + 1, "9.0.0", "newer"), (0, "0.0.1", "older")] {
        let env = Env::new();
        env.config(&env.worker_with(
            "m",
            "sdk_worker.py",
            &[
                ("SDK_PROTOCOL", &protocol.to_string()),
                ("SDK_VERSION", sdk),
            ],
            "workers = 2\nbackoff_initial = \"10ms\"",
        ));
        let out = env.run(&["start"]);
        assert_eq!(out.code, 1, "{out:?}");
        let all = out.all();
        for needle in [
            format!("speaks worker protocol version {protocol} (paddock SDK {sdk} at "),
            format!("this daemon (paddock {RELEASE}) speaks versions {MIN_VERSION} to {VERSION}"),
            format!("the SDK is {side} than the daemon"),
            format!("{} -m pip install 'paddock-serve=={RELEASE}'", python3()),
        ] {
            assert!(all.contains(&needle), "{needle:?} not in {all}");
        }
        assert!(out.took < Duration::from_secs(15), "{:?}", out.took);
        // One try per worker at most: nothing restarted it.
        assert!((1..=2).contains(&spawns(&env)), "{} spawns", spawns(&env));
        env.assert_nothing_left_now();
    }
}

#[test]
fn an_sdk_changed_under_a_running_service_fails_its_worker_until_a_reload() {
    let env = Env::new();
    env.config(&env.worker_with(
        "m",
        "sdk_worker.py",
        &[],
        "workers = 1\nbackoff_initial = \"10ms\"\nbackoff_max = \"100ms\"",
    ));
    env.start_ok();
    // status shows the SDK each worker said it runs.
    let w = env.status()["services"][0]["workers"][0].clone();
    let sdk_dir = format!("{}/../../sdk/python/paddock", env!("CARGO_MANIFEST_DIR"));
    assert_eq!(w["sdk"]["version"], RELEASE, "{w}");
    assert_eq!(w["sdk"]["protocol"], VERSION, "{w}");
    assert_eq!(
        std::fs::canonicalize(w["sdk"]["path"].as_str().unwrap()).unwrap(),
        std::fs::canonicalize(&sdk_dir).unwrap(),
        "{w}"
    );
    let human = env.run(&["status"]).stdout;
    assert!(
        human.contains(&format!("m: SDK {RELEASE} (protocol {VERSION}, Python 3.")),
        "{human}"
    );

    // The model's environment gets an SDK this daemon cannot speak to; the worker dies.
    std::fs::write(env.path().join("protocol"), "99").unwrap();
    kill(w["pid"].as_i64().unwrap() as i32, 9);
    let failed = wait_until(Duration::from_secs(10), "the worker failed", || {
        let w = env.status()["services"][0]["workers"][0].clone();
        (w["state"] == "failed").then_some(w)
    });
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("protocol version 99"), "{reason}");
    assert!(
        reason.contains("-m pip install 'paddock-serve=="),
        "{reason}"
    );
    assert_eq!(failed["sdk"]["protocol"], 99, "{failed}");
    // A request is told why at once, not kept waiting for a worker that cannot come.
    let r = call(env.port, "m", &json!({}));
    assert_eq!(r.code, 503, "{}", r.text());
    assert!(r.text().contains("protocol version 99"), "{}", r.text());
    assert!(r.header("retry-after").is_some());
    // A job for it goes back to the queue for a minute, not round a claim loop.
    let r = crate::harness::post(env.port, "/v1/jobs/m", "application/json", b"{}").unwrap();
    assert_eq!(r.code, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let parked = wait_until(Duration::from_secs(10), "the job released", || {
        let (_, body) = crate::harness::http_get(env.port, &format!("/v1/jobs/{id}"))?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let ahead =
            crate::harness::epoch_ms(&v["run_after"]) - crate::harness::epoch_ms(&v["created_at"]);
        (v["state"] == "queued" && ahead >= 50_000).then_some(v)
    });
    assert_eq!(parked["attempts"], 0, "{parked}");
    // The first life and the one that failed: no loop.
    assert_eq!(spawns(&env), 2);
    assert_eq!(env.status()["services"][0]["workers"][0]["state"], "failed");

    // Fixed, then reloaded: served again.
    std::fs::remove_file(env.path().join("protocol")).unwrap();
    let out = env.run(&["reload"]);
    assert_eq!(out.code, 0, "{out:?}");
    let r = call(env.port, "m", &json!({}));
    assert_eq!(r.code, 200, "{}", r.text());
    env.stop_ok();
    env.assert_nothing_left();
}

fn doctor(env: &Env) -> (i32, Value) {
    let out = env.run(&["doctor", "--json"]);
    (out.code, serde_json::from_str(&out.stdout).unwrap())
}

fn finding<'a>(report: &'a Value, subject: &str) -> Option<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subject"] == subject)
}

#[test]
fn doctor_warns_of_an_older_sdk_and_errs_when_the_interpreter_imports_none() {
    let env = Env::new();
    env.config(&env.worker_with(
        "old",
        "sdk_worker.py",
        &[("SDK_VERSION", "0.0.1")],
        "workers = 1",
    ));
    env.start_ok();
    let (code, report) = doctor(&env);
    assert_eq!(code, 1, "{report}");
    let f = finding(&report, "old/0").unwrap_or_else(|| panic!("{report}"));
    assert_eq!(f["severity"], "warning", "{f}");
    assert!(
        f["finding"]
            .as_str()
            .unwrap()
            .contains("paddock SDK 0.0.1 (protocol"),
        "{f}"
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .ends_with(&format!("-m pip install 'paddock-serve=={RELEASE}'")),
        "{f}"
    );
    // The older SDK works.
    assert_eq!(call(env.port, "old", &json!({})).code, 200);
    env.stop_ok();

    // Not running: the interpreter is asked; a `paddock` it cannot import (a broken
    // one first on its path) is an error naming the fix.
    let broken = env.path().join("broken/paddock");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("__init__.py"),
        "raise ImportError('half installed')\n",
    )
    .unwrap();
    env.config(&format!(
        "[services.gone]\ncommand = [\"python3\", \"worker.py\"]\nenv = {{ PYTHONPATH = {:?} }}\n",
        env.path().join("broken").display().to_string()
    ));
    let (code, report) = doctor(&env);
    assert_eq!(code, 1, "{report}");
    let f = finding(&report, "service gone").unwrap_or_else(|| panic!("{report}"));
    assert_eq!(f["severity"], "error", "{f}");
    let text = f["finding"].as_str().unwrap();
    assert!(
        text.contains("cannot import paddock (ImportError: half installed)"),
        "{f}"
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .starts_with("python3 -m pip install 'paddock-serve=="),
        "{f}"
    );
}
