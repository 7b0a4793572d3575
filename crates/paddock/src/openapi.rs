//! The gateway described as an OpenAPI 3.1 document: the fixed routes, per worker
//! service each handler its workers announced (idempotent and batched ones marked),
//! the job routes, the error body and auth. Served at `GET /openapi.json` by a
//! running daemon (with the handlers its workers announced), and printed by
//! `paddock openapi` from the config alone (a service whose handlers are not known
//! yet gets the generic `/v1/{service}/{method}` route).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::config::{Config, Kind};

/// What a service's workers announced.
#[derive(Debug, Clone, Default)]
pub struct Handlers {
    pub methods: Vec<String>,
    pub idempotent: Vec<String>,
    pub batched: Vec<String>,
}

fn error_responses(codes: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for code in codes {
        out.insert(
            (*code).to_string(),
            json!({"$ref": format!("#/components/responses/E{code}")}),
        );
    }
    Value::Object(out)
}

/// A model call: any body in, any body out (the handler decides the types).
fn call(summary: String, id: String, service: &str, method: &str, h: Option<&Handlers>) -> Value {
    let mut responses = error_responses(&["400", "404", "413", "500", "502", "503", "504"]);
    responses["200"] = json!({
        "description": "the handler's answer, with the content type it chose (a streamed answer: chunked, or Server-Sent Events on Accept: text/event-stream)",
        "content": {"*/*": {"schema": {}}}
    });
    let mut op = json!({
        "summary": summary,
        "operationId": id,
        "tags": [service],
        "requestBody": {"required": false, "content": {"*/*": {"schema": {}}}},
        "responses": responses,
    });
    if let Some(h) = h {
        op["x-paddock-idempotent"] = json!(h.idempotent.iter().any(|m| m == method));
        op["x-paddock-batched"] = json!(h.batched.iter().any(|m| m == method));
    }
    op
}

fn enqueue(id: String, service: &str, method: &str) -> Value {
    let mut responses = error_responses(&["400", "404", "409", "413", "503"]);
    let enqueued =
        json!({"application/json": {"schema": {"$ref": "#/components/schemas/Enqueued"}}});
    responses["202"] = json!({"description": "queued", "content": enqueued.clone()});
    responses["200"] = json!({
        "description": "the job this Idempotency-Key already made (nothing queued)",
        "content": enqueued
    });
    json!({
        "summary": format!("Queue a durable job for {service}'s {method:?} handler"),
        "operationId": id,
        "tags": ["jobs"],
        "parameters": [
            {"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string"}},
            {"name": "delay", "in": "query", "required": false, "description": "run no sooner than this from now: seconds (90) or a duration (90s, 15m); the job is `scheduled` until then", "schema": {"type": "string"}},
            {"name": "run_at", "in": "query", "required": false, "description": "run no sooner than this RFC 3339 time", "schema": {"type": "string", "format": "date-time"}},
            {"name": "priority", "in": "query", "required": false, "description": "higher first (default 0)", "schema": {"type": "integer"}}
        ],
        "requestBody": {"required": false, "content": {"*/*": {"schema": {}}}},
        "responses": responses,
    })
}

/// The document; `handlers` holds what the running workers announced, per service.
pub fn document(config: &Config, handlers: &BTreeMap<String, Handlers>) -> Value {
    let mut paths = serde_json::Map::new();
    let text = |d: &str| json!({"description": d, "content": {"text/plain": {"schema": {"type": "string"}}}});
    let doc = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"type": "object"}}}});
    paths.insert("/healthz".into(), json!({"get": {"summary": "Liveness: the daemon answers", "operationId": "healthz", "tags": ["probes"], "security": [], "responses": {"200": doc("alive")}}}));
    paths.insert("/readyz".into(), json!({"get": {"summary": "Readiness: every service has a ready worker", "operationId": "readyz", "tags": ["probes"], "security": [], "responses": {"200": doc("ready"), "503": doc("not ready, and why")}}}));
    paths.insert("/status".into(), json!({"get": {"summary": "The instance, its services and workers", "operationId": "status", "tags": ["instance"], "responses": {"200": doc("the status (as paddock status --json)")}}}));
    paths.insert("/metrics".into(), json!({"get": {"summary": "Prometheus metrics", "operationId": "metrics", "tags": ["instance"], "responses": {"200": text("the text exposition")}}}));
    paths.insert("/openapi.json".into(), json!({"get": {"summary": "This document", "operationId": "openapi", "tags": ["instance"], "responses": {"200": doc("OpenAPI 3.1")}}}));
    service_paths(&mut paths, config, handlers);
    job_paths(&mut paths);
    admin_paths(&mut paths);
    let mut responses = serde_json::Map::new();
    for (code, what) in [
        (
            "400",
            "the request is wrong (the handler's own words, or the gateway's)",
        ),
        ("404", "no such service, handler, job or route"),
        ("409", "the job is not in a state that allows it"),
        ("413", "the request is larger than the service's max_frame"),
        (
            "500",
            "the handler failed (an error id; the service's log has the details)",
        ),
        (
            "401",
            "no token, or the wrong one (instance.auth_token; for operator routes without it, `paddock token`)",
        ),
        (
            "502",
            "the worker crashed or broke the protocol while serving the request (the signal and an error id; its last log lines only with expose_errors)",
        ),
        (
            "503",
            "no worker could take it (queue full, crash-looping, stopping, store unavailable)",
        ),
        (
            "504",
            "the request passed its deadline; the worker was killed and replaced",
        ),
    ] {
        responses.insert(
            format!("E{code}"),
            json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    let mut d = json!({
        "openapi": "3.1.0",
        "info": {
            "title": format!("paddock instance {}", config.instance.name),
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The gateway of a paddock instance: model calls, durable jobs, probes, status and metrics."
        },
        "servers": [{"url": format!("http://{}", config.instance.listen)}],
        "paths": Value::Object(paths),
        "components": {
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"},
                    "service": {"type": "string"},
                    "cause": {"description": "why, as structured data (a crash's signal and error id, a deadline, a limit)"}
                }},
                "Enqueued": {"type": "object", "required": ["id", "state", "created"], "properties": {
                    "id": {"type": "string"},
                    "state": {"type": "string", "enum": ["queued", "scheduled", "claimed", "running", "done", "dead", "cancelled"]},
                    "created": {"type": "boolean"}
                }},
                "Job": {"type": "object", "required": ["id", "state", "service", "method"], "properties": {
                    "id": {"type": "string"}, "seq": {"type": "integer"}, "service": {"type": "string"},
                    "method": {"type": "string"},
                    "state": {"type": "string", "enum": ["queued", "scheduled", "claimed", "running", "done", "dead", "cancelled"]},
                    "attempts": {"type": "integer"}, "failures": {"type": "integer"}, "max_attempts": {"type": "integer"},
                    "idempotency_key": {"type": ["string", "null"]}, "created_at": {"type": "string"},
                    "started_at": {"type": ["string", "null"]}, "finished_at": {"type": ["string", "null"]},
                    "run_after": {"type": "string"}, "history": {"type": "array"},
                    "result_content_type": {"type": ["string", "null"]}, "owner": {"type": ["string", "null"]},
                    "priority": {"type": "integer"}
                }}
            },
            "responses": Value::Object(responses),
        }
    });
    d["components"]["securitySchemes"] = json!({"operator": {"type": "http", "scheme": "bearer", "description": "instance.auth_token, or without it the instance's operator token (`paddock token` prints it)"}});
    if config.instance.auth_token.is_some() {
        d["components"]["securitySchemes"]["bearer"] =
            json!({"type": "http", "scheme": "bearer", "description": "instance.auth_token"});
        d["security"] = json!([{"bearer": []}]);
    }
    d
}

/// Each worker service's model and job routes, with the handlers its workers
/// announced (or the generic forms before they did).
fn service_paths(
    paths: &mut serde_json::Map<String, Value>,
    config: &Config,
    handlers: &BTreeMap<String, Handlers>,
) {
    for s in config.services.iter().filter(|s| s.kind == Kind::Worker) {
        let name = s.name.as_str();
        let h = handlers.get(name).filter(|h| !h.methods.is_empty());
        match h {
            Some(h) => {
                if h.methods.iter().any(|m| m == "predict") {
                    paths.insert(
                        format!("/v1/{name}"),
                        json!({"post": call(format!("Call {name}'s default handler (predict)"), format!("call_{name}"), name, "predict", Some(h))}),
                    );
                    paths.insert(
                        format!("/v1/jobs/{name}"),
                        json!({"post": enqueue(format!("enqueue_{name}"), name, "predict")}),
                    );
                }
                for m in &h.methods {
                    paths.insert(
                        format!("/v1/{name}/{m}"),
                        json!({"post": call(format!("Call {name}'s {m:?} handler"), format!("call_{name}_{m}"), name, m, Some(h))}),
                    );
                    paths.insert(
                        format!("/v1/jobs/{name}/{m}"),
                        json!({"post": enqueue(format!("enqueue_{name}_{m}"), name, m)}),
                    );
                }
            }
            None => {
                paths.insert(
                    format!("/v1/{name}"),
                    json!({"post": call(format!("Call {name}'s default handler (predict); its handlers are known once its workers run"), format!("call_{name}"), name, "predict", None)}),
                );
                let mut op = call(
                    format!("Call one of {name}'s handlers"),
                    format!("call_{name}_method"),
                    name,
                    "method",
                    None,
                );
                op["parameters"] = json!([{"name": "method", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_]{1,128}$"}}]);
                paths.insert(format!("/v1/{name}/{{method}}"), json!({"post": op}));
                paths.insert(
                    format!("/v1/jobs/{name}"),
                    json!({"post": enqueue(format!("enqueue_{name}"), name, "predict")}),
                );
            }
        }
    }
}

/// The job routes that are not a service's.
fn job_paths(paths: &mut serde_json::Map<String, Value>) {
    let job =
        json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}});
    paths.insert("/v1/jobs".into(), json!({"get": {
        "summary": "A page of jobs", "operationId": "list_jobs", "tags": ["jobs"],
        "parameters": [
            {"name": "state", "in": "query", "required": false, "schema": {"type": "string", "enum": ["queued", "scheduled", "claimed", "running", "done", "dead", "cancelled"]}},
            {"name": "service", "in": "query", "required": false, "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            {"name": "after", "in": "query", "required": false, "schema": {"type": "integer"}}
        ],
        "responses": {"200": {"description": "jobs and the next page's `after`", "content": {"application/json": {"schema": {"type": "object", "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}, "next": {"type": ["integer", "null"]}}}}}}, "400": {"$ref": "#/components/responses/E400"}, "404": {"$ref": "#/components/responses/E404"}, "503": {"$ref": "#/components/responses/E503"}}
    }}));
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    paths.insert("/v1/jobs/{id}".into(), json!({
        "get": {"summary": "A job; with `wait`, as soon as it is finished (a long-poll)", "operationId": "show_job", "tags": ["jobs"], "parameters": [
            id[0].clone(),
            {"name": "wait", "in": "query", "required": false, "description": "answer as soon as the job is done, dead or cancelled, or after this long (seconds or a duration, at most 60s)", "schema": {"type": "string"}}
        ], "responses": {"200": {"description": "the job", "content": job["content"].clone()}, "400": {"$ref": "#/components/responses/E400"}, "404": {"$ref": "#/components/responses/E404"}, "503": {"$ref": "#/components/responses/E503"}}},
        "delete": {"summary": "Cancel a queued, scheduled, claimed or running job", "operationId": "cancel_job", "tags": ["jobs"], "parameters": id, "responses": {"200": {"description": "cancelled", "content": job["content"].clone()}, "404": {"$ref": "#/components/responses/E404"}, "409": {"$ref": "#/components/responses/E409"}, "503": {"$ref": "#/components/responses/E503"}}}
    }));
    paths.insert("/v1/jobs/{id}/result".into(), json!({"get": {
        "summary": "A done job's result, with its content type; with `wait`, as soon as the job is finished", "operationId": "job_result", "tags": ["jobs"], "parameters": [
            id[0].clone(),
            {"name": "wait", "in": "query", "required": false, "description": "answer as soon as the job is finished, or after this long (seconds or a duration, at most 60s); a job that is not done is a 409 naming its state", "schema": {"type": "string"}}
        ],
        "responses": {"200": {"description": "the result", "content": {"*/*": {"schema": {}}}}, "400": {"$ref": "#/components/responses/E400"}, "404": {"$ref": "#/components/responses/E404"}, "409": {"$ref": "#/components/responses/E409"}, "503": {"$ref": "#/components/responses/E503"}}
    }}));
    // Operator routes need the operator token, on every instance.
}

/// The operator routes (`/admin/...`) and the dashboard.
fn admin_paths(paths: &mut serde_json::Map<String, Value>) {
    let doc = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"type": "object"}}}});
    let job =
        json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}});
    let admin = |summary: &str, id: &str, param: &str, ok: Value, errors: &[&str]| {
        let mut responses = error_responses(errors);
        responses["200"] = ok;
        responses["401"] = json!({"$ref": "#/components/responses/E401"});
        json!({"post": {
            "summary": summary, "operationId": id, "tags": ["admin"],
            "parameters": [{"name": param, "in": "path", "required": true, "schema": {"type": "string"}}],
            "security": [{"operator": []}],
            "responses": responses
        }})
    };
    paths.insert("/ui".into(), json!({"get": {"summary": "The dashboard (the page needs no token; its data calls do)", "operationId": "ui", "tags": ["instance"], "security": [], "responses": {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}}}}));
    paths.insert("/admin/services/{name}/logs".into(), json!({"get": {
        "summary": "A service's (or one worker's) last log lines", "operationId": "service_logs", "tags": ["admin"],
        "parameters": [
            {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}},
            {"name": "worker", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": 4294967295u64}},
            {"name": "lines", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
        ],
        "security": [{"operator": []}],
        "responses": {"200": doc("the lines"), "400": {"$ref": "#/components/responses/E400"}, "401": {"$ref": "#/components/responses/E401"}, "404": {"$ref": "#/components/responses/E404"}}
    }}));
    paths.insert(
        "/admin/services/{name}/reload".into(),
        admin(
            "Replace the service's workers one at a time",
            "reload_service",
            "name",
            doc("the workers replaced"),
            &["404", "409"],
        ),
    );
    paths.insert(
        "/admin/jobs/{id}/retry".into(),
        admin(
            "Queue a dead or cancelled job again",
            "retry_job",
            "id",
            json!({"description": "the job", "content": job["content"].clone()}),
            &["404", "409", "503"],
        ),
    );
    paths.insert(
        "/admin/jobs/{id}/cancel".into(),
        admin(
            "Cancel a queued, scheduled, claimed or running job",
            "cancel_job_admin",
            "id",
            json!({"description": "the job", "content": job["content"].clone()}),
            &["404", "409", "503"],
        ),
    );
}
