//! Operator actions under the reserved `/admin/` prefix: reload a service, retry and
//! cancel jobs; and no service may be named `admin`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Env, post, wait_until};

fn admin(env: &Env, path: &str) -> (u16, Value) {
    let r = env.admin("POST", path);
    (r.code, r.json())
}

fn admin_get(env: &Env, path: &str) -> (u16, String) {
    let r = env.admin("GET", path);
    (r.code, r.text())
}

fn job(env: &Env, id: &str) -> Value {
    let (_, body) = env.get(&format!("/v1/jobs/{id}")).unwrap();
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_service_is_reloaded_and_jobs_retried_and_cancelled_over_http() {
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1\njobs_share = 1.0\nmax_attempts = 1"));
    env.start_ok();
    let before = env.status()["services"][0]["workers"][0]["pid"].clone();
    let (code, v) = admin(&env, "/admin/services/fake/reload");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["replaced"].as_array().unwrap().len(), 1, "{v}");
    let w = &env.status()["services"][0]["workers"][0];
    assert_ne!(w["pid"], before, "{w}");
    assert_eq!(w["generation"], 2, "{w}");
    let (code, v) = admin(&env, "/admin/services/nope/reload");
    assert_eq!(code, 404, "{v}");
    // A worker's last log lines, as the dashboard shows them on click.
    let (code, body) = admin_get(&env, "/admin/services/fake/logs?worker=0&lines=3");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let lines = v["lines"].as_array().unwrap();
    assert!(!lines.is_empty() && lines.len() <= 3, "{v}");
    assert!(
        lines
            .iter()
            .all(|l| l.as_str().unwrap().contains(" fake/0 ")),
        "{v}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.as_str().unwrap().contains("spawned pid")),
        "the reload's spawn is among the last lines: {v}"
    );
    // A worker, a parameter or a count that does not exist: refused, naming what does.
    let (code, body) = admin_get(&env, "/admin/services/fake/logs?worker=5");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("0 to 0"), "{body}");
    let (code, body) = admin_get(&env, "/admin/services/fake/logs?wrker=0");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("wrker"), "{body}");
    let (code, body) = admin_get(&env, "/admin/services/fake/logs?lines=0");
    assert_eq!(code, 400, "{body}");

    // A job that fails its only attempt is dead; retry queues it again.
    let body = json!({"op": "raise"}).to_string();
    let r = post(
        env.port,
        "/v1/jobs/fake",
        "application/json",
        body.as_bytes(),
    )
    .unwrap();
    let dead = r.json()["id"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(10), "the job dead", || {
        (job(&env, &dead)["state"] == "dead").then_some(())
    });
    let (code, v) = admin(&env, &format!("/admin/jobs/{dead}/retry"));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["failures"], 0, "{v}");
    // Cancel: a queued job goes; a dead or unknown one is refused. (The pump claims
    // a few jobs ahead, which makes them claimed: the last of 100 is still queued.)
    let hold = json!({"op": "sleep", "s": 1}).to_string();
    let mut queued = String::new();
    for _ in 0..100 {
        let r = post(
            env.port,
            "/v1/jobs/fake",
            "application/json",
            hold.as_bytes(),
        )
        .unwrap();
        queued = r.json()["id"].as_str().unwrap().to_string();
    }
    assert_eq!(job(&env, &queued)["state"], "queued");
    let (code, v) = admin(&env, &format!("/admin/jobs/{queued}/cancel"));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["state"], "cancelled", "{v}");
    let (code, v) = admin(&env, &format!("/admin/jobs/{queued}/cancel"));
    assert_eq!(code, 409, "cancelled twice: {v}");
    let (code, _) = admin(&env, "/admin/jobs/j000/cancel");
    assert_eq!(code, 404);
    env.stop_ok();
}

#[test]
fn no_service_may_be_named_like_the_admin_prefix() {
    let env = Env::new();
    env.config(&env.worker("admin", ""));
    let out = env.run(&["check"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("\"admin\" is reserved"), "{out:?}");
}

/// The dashboard in a real browser (headless Chromium through Playwright): worker
/// rows and states, each worker's GPU memory (a stand-in NVML), the crash cause
/// shown, the rate chart moving under traffic, a screenshot; with an auth_token,
/// nothing shown until the token is given.
#[test]
#[cfg_attr(paddock_skip_browser, ignore = "PADDOCK_SKIP_BROWSER=1")]
fn the_dashboard_shows_workers_a_crash_and_live_traffic_in_a_real_browser() {
    let python = crate::harness::test_python("import playwright");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "the dashboard test needs Debian's chromium (.ci/test installs it)"
    );
    for token in [None, Some("d4shboard-token-123")] {
        let mut env = Env::new();
        env.instance_extra = "memory_budget = \"4GiB\"\n".into();
        if let Some(t) = token {
            env.instance_extra += &format!("auth_token = \"{t}\"\n");
        }
        // Two workers on a (stand-in) GPU, 100 MiB each, for the GPU column.
        let nvml = crate::fake_nvml::FakeNvml::install(
            &mut env,
            &[("Fake H200", 8 * crate::fake_nvml::GIB)],
        );
        let services = format!(
            "{}{}{}",
            nvml.service(&env, "fake", 100, "devices = [0]\nworkers_per_device = 2"),
            env.worker("crashy", "workers = 1"),
            env.worker("lazy", "min_workers = 0\nidle_timeout = \"1h\"")
        );
        env.config(&services);
        env.start_ok();
        // A crash for the page to show: a request that kills its worker.
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let r = crate::harness::request(
            env.port,
            "POST",
            "/v1/crashy",
            &format!("Content-Type: application/json\r\n{auth}"),
            br#"{"op": "segv"}"#,
        )
        .unwrap();
        assert_eq!(r.code, 502, "{}", r.text());
        // The daemon's GPU reading (once a second) has both workers' memory.
        wait_until(Duration::from_secs(5), "a GPU reading", || {
            let st = env.status();
            let fake = st["services"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == "fake")
                .unwrap()
                .clone();
            fake["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["gpu_memory_bytes"] == 100 * crate::fake_nvml::MIB)
                .then_some(())
        });
        let shot = env.path().join("dashboard.png");
        let mut cmd = std::process::Command::new(&python);
        cmd.arg(format!(
            "{}/tests/python/dashboard_check.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(env.port.to_string())
        .arg(&shot);
        match token {
            Some(t) => {
                cmd.arg(t);
            }
            None => {
                cmd.env("OPERATOR_TOKEN", env.operator_token());
            }
        }
        let report = crate::harness::json_report(&mut cmd);
        if token.is_none() {
            assert_eq!(report["logs_with_operator_token"], true, "{report}");
        }
        assert_eq!(report["crash_shown"], true, "{report}");
        assert!(report["rate"].as_f64().unwrap() > 1.0, "{report}");
        assert!(report["p50_ms"].as_f64().unwrap() > 0.0, "{report}");
        let rows = report["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 3, "{report}");
        // The loading table: the unloaded service and why, the budget's use.
        let scaling = report["scaling"].as_array().unwrap();
        assert_eq!(scaling.len(), 3, "{report}");
        let lazy = scaling.iter().find(|r| r[0] == "lazy").unwrap();
        assert_eq!(lazy[1], "false", "{report}");
        assert!(
            lazy[2]
                .as_str()
                .unwrap()
                .contains("unloaded: proven at start"),
            "{report}"
        );
        assert!(lazy[2].as_str().unwrap().contains("0 (0–1)"), "{report}");
        assert!(
            report["memory"]
                .as_str()
                .unwrap()
                .starts_with("memory budget 4096 MiB: "),
            "{report}"
        );
        for r in rows {
            // The service's state and the worker's memory are in its row.
            let text = r[3].as_str().unwrap();
            assert!(
                text.contains("(ready)") || text.contains("(degraded)"),
                "{r}"
            );
            assert!(text.contains(" MiB"), "{r}");
            // The GPU column: the device and what the worker holds there.
            assert_eq!(
                r[4].as_str().unwrap(),
                if r[0] == "fake" { "0: 100 MiB" } else { "-" },
                "{r}"
            );
        }
        assert!(
            report["instance"]
                .as_str()
                .unwrap()
                .contains("GPUs 0 Fake H200 (200 of 8192 MiB, 0 % busy)"),
            "{report}"
        );
        assert!(
            std::fs::metadata(&shot).unwrap().len() > 10_000,
            "no screenshot"
        );
        // Keep the screenshot the README shows up to date when asked to.
        if token.is_none()
            && let Ok(dest) = std::env::var("PADDOCK_DASHBOARD_SCREENSHOT")
        {
            std::fs::copy(&shot, dest).unwrap();
        }
        env.stop_ok();
    }
}

/// Any account on the machine can reach 127.0.0.1: on an instance without an
/// auth_token, what shows log lines or changes anything still needs a token, the
/// one the daemon made at its first start (0600, in the instance's folder), which
/// `paddock token` prints. States stay open to read.
#[test]
fn operator_routes_need_the_instance_token_even_on_loopback() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.config(&env.worker("fake", "workers = 1"));
    let out = env.run(&["token"]);
    assert_eq!(out.code, 4, "no token before the first start: {out:?}");
    assert!(out.stderr.contains("paddock start"), "{out:?}");
    env.start_ok();
    let token = env.operator_token();
    assert_eq!(token.len(), 64, "{token}");
    let file = env.state_dir().join("token");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let routes = [
        ("GET", "/admin/services/fake/logs"),
        ("POST", "/admin/services/fake/reload"),
        ("POST", "/admin/jobs/j000/retry"),
        ("POST", "/admin/jobs/j000/cancel"),
    ];
    for (method, path) in routes {
        for auth in ["", "Authorization: Bearer wrong\r\n"] {
            let r = crate::harness::request(env.port, method, path, auth, b"").unwrap();
            assert_eq!(r.code, 401, "{method} {path}: {}", r.text());
            assert!(r.text().contains("paddock token"), "{}", r.text());
            assert!(!r.text().contains("spawned"), "{}", r.text());
        }
    }
    let r = env.admin("GET", "/admin/services/fake/logs");
    assert_eq!(r.code, 200, "{}", r.text());
    assert!(r.text().contains("spawned pid"), "{}", r.text());
    // States, metrics and the page need no token here.
    for path in ["/status", "/metrics", "/ui", "/healthz", "/readyz"] {
        assert_eq!(env.get(path).unwrap().0, 200, "{path}");
    }
    // The CLI acts over its socket, token or not.
    assert_eq!(env.run(&["reload"]).code, 0);
    // The same token after a restart: a dashboard tab keeps working.
    env.stop_ok();
    env.start_ok();
    assert_eq!(env.operator_token(), token);
    let v: Value = serde_json::from_str(&env.run(&["token", "--json"]).stdout).unwrap();
    assert_eq!(v["token"], token.as_str());
    env.stop_ok();
}
