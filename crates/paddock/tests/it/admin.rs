//! Operator actions under the reserved `/admin/` prefix: reload a service, retry and
//! cancel jobs; and no service may be named `admin`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Env, post, wait_until};

fn admin(env: &Env, path: &str) -> (u16, Value) {
    let r = post(env.port, path, "application/json", b"").unwrap();
    (r.code, r.json())
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
    // a few jobs ahead, which makes them running: the last of 8 is still queued.)
    let hold = json!({"op": "sleep", "s": 1}).to_string();
    let mut queued = String::new();
    for _ in 0..8 {
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
