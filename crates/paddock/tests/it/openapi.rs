//! `GET /openapi.json` and `paddock openapi`: an OpenAPI 3.1 document of the
//! gateway that `openapi-spec-validator` accepts, with the handlers the workers
//! announced.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::{Env, test_python};

/// Validates `doc` with openapi-spec-validator (from .venv-test).
fn validate(python: &str, doc: &Value) {
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(sys.stdin))",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not a valid OpenAPI document: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_gateway_describes_itself_with_the_announced_handlers() {
    let python = test_python("import openapi_spec_validator");
    let env = Env::new();
    let services = format!(
        "{}{}",
        env.worker("fake", ""),
        env.worker_with("b", "batch_worker.py", &[], "")
    );
    env.config(&services);
    // Without a daemon: from the config (handlers unknown: the generic route).
    let out = env.run(&["openapi"]);
    assert_eq!(out.code, 0, "{out:?}");
    let offline: Value = serde_json::from_str(&out.stdout).unwrap();
    validate(&python, &offline);
    assert!(
        offline["paths"]["/v1/fake/{method}"].is_object(),
        "{offline:#}"
    );
    env.start_ok();
    let (code, body) = env.get("/openapi.json").unwrap();
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    validate(&python, &doc);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = &doc["paths"];
    // Every handler the workers announced, with its marks.
    let work = &paths["/v1/b/work"]["post"];
    assert_eq!(work["x-paddock-batched"], true, "{work:#}");
    assert_eq!(work["x-paddock-idempotent"], true, "{work:#}");
    assert_eq!(paths["/v1/b/hold"]["post"]["x-paddock-batched"], false);
    assert!(paths["/v1/fake"]["post"].is_object(), "the default handler");
    assert!(paths["/v1/fake/echo"]["post"].is_object());
    assert!(paths["/v1/jobs/b/work"]["post"]["responses"]["202"].is_object());
    for fixed in [
        "/healthz",
        "/readyz",
        "/status",
        "/metrics",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/result",
    ] {
        assert!(paths[fixed].is_object(), "{fixed} missing");
    }
    // The error body every failure shares.
    let e502 = &doc["components"]["responses"]["E502"];
    assert_eq!(
        e502["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Error"
    );
    // `paddock openapi` with a daemon running prints the live document.
    let out = env.run(&["openapi"]);
    assert_eq!(out.code, 0, "{out:?}");
    let live: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(live, doc);
    env.stop_ok();
}

#[test]
fn with_an_auth_token_the_document_declares_bearer_auth_and_needs_it() {
    let python = test_python("import openapi_spec_validator");
    let mut env = Env::new();
    env.instance_extra = "auth_token = \"s3cret-token-123456\"\n".into();
    env.config(&env.worker("fake", ""));
    env.start_ok();
    let (code, _) = env.get("/openapi.json").unwrap();
    assert_eq!(code, 401, "the document is behind the token too");
    let out = env.run(&["openapi"]);
    assert_eq!(out.code, 0, "{out:?}");
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    validate(&python, &doc);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
    // The probes answer without it, and say so.
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        serde_json::json!([])
    );
    assert!(
        !out.stdout.contains("s3cret"),
        "the token leaked into the document"
    );
    env.stop_ok();
}

/// Schemathesis, driven by the live `/openapi.json` against the bundled example
/// (every route, generated bodies, headers, paths and query strings, the job routes
/// included): no server error but the documented ones, every response as declared,
/// and the daemon alive with its memory flat afterwards. Excluded checks, and why:
/// `positive_data_acceptance` (a handler's body is the handler's business: the
/// document cannot say what it accepts), `unsupported_method` and
/// `allow_header_conformance` (`/v1/jobs/{x}` is a service for POST and a job id for
/// GET and DELETE: the router's Allow header names both).
#[test]
fn schemathesis_finds_nothing_undocumented() {
    let python = test_python("import schemathesis");
    let schemathesis = std::path::Path::new(&python).with_file_name("schemathesis");
    let env = Env::new();
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    env.config(&format!(
        "[services.sentiment]\ncommand = [\"python3\", \"{root}/examples/sentiment/worker.py\"]\nworkers = 2\nenv = {{ PYTHONPATH = \"{root}/sdk/python\" }}\n"
    ));
    env.start_ok();
    let (_, doc) = env.get("/openapi.json").unwrap();
    let spec = env.path().join("openapi.json");
    std::fs::write(&spec, doc).unwrap();
    let before = env.daemon_rss_kib();
    let out = Command::new(&schemathesis)
        .args(["run", spec.to_str().unwrap(), "--url"])
        .arg(format!("http://127.0.0.1:{}", env.port))
        .args([
            "--max-examples",
            "50",
            "--phases",
            "examples,coverage,fuzzing",
            "--generation-deterministic",
            "--exclude-checks",
            "positive_data_acceptance,unsupported_method,allow_header_conformance",
            "--request-timeout",
            "10",
            // The operator routes too (the header is ignored elsewhere here).
            "--header",
            &format!("Authorization: Bearer {}", env.operator_token()),
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    // The daemon is alive, answers, and did not grow.
    assert_eq!(env.get("/healthz").map(|r| r.0), Some(200));
    let after = env.daemon_rss_kib();
    assert!(
        after < before + 5 * 1024,
        "the daemon grew from {before} KiB to {after} KiB"
    );
    env.stop_ok();
}
