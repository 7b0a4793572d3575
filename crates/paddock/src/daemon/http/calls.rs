//! The model routes, `POST /v1/{service}[/{method}]`: a call read within its
//! service's body limit, handed to the service's dispatcher, and its `Outcome`
//! answered as HTTP (a streamed answer as chunks or Server-Sent Events).
//!
//! Invariant: a failure's answer says what failed in the JSON error shape
//! (`errors::service_error`), and carries a worker's log lines or a handler's
//! traceback only with `expose_errors`.

use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::errors::service_error as error;
use super::request_body;
use crate::daemon::failure::{self, Verdict};
use crate::daemon::handles::SharedRef;
use crate::daemon::messages::{Outcome, check_request};

pub(super) async fn call_default(
    State(shared): State<SharedRef>,
    Path(service): Path<String>,
    req: Request,
) -> Response {
    call(shared, service, "predict".into(), req).await
}

pub(super) async fn call_method(
    State(shared): State<SharedRef>,
    Path((service, method)): Path<(String, String)>,
    req: Request,
) -> Response {
    call(shared, service, method, req).await
}

async fn call(shared: SharedRef, service: String, method: String, req: Request) -> Response {
    let Some(svc) = shared.supervisor.service(&service) else {
        return error(
            StatusCode::NOT_FOUND,
            &service,
            format!("no service named {service:?}"),
            json!(null),
        );
    };
    let Some(dispatcher) = &svc.dispatcher else {
        let hint = match svc.port {
            Some(p) => {
                format!("service {service:?} is a process service: call it on its own port, {p}")
            }
            None => format!(
                "service {service:?} is a process service and takes no requests through the gateway"
            ),
        };
        return error(StatusCode::NOT_FOUND, &service, hint, json!(null));
    };
    // Server-Sent Events for a streamed answer, when the client asks for them.
    let sse = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    // Headers are read in place (the HeaderMap extractor would clone them all).
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    if let Err(e) = check_request(&method, &content_type) {
        return error(
            StatusCode::BAD_REQUEST,
            &service,
            e.to_string(),
            json!(null),
        );
    }
    // The body, within what one frame to this service's workers can carry: a
    // declared length over it is refused from the head, before the body is
    // waited for.
    let body_timeout = shared.config.instance.body_timeout;
    let limit = request_body::online_limit(svc.config.max_frame, &method, &content_type);
    let setting = format!(
        "services.{service}.max_frame = {} bytes, less this request's framing",
        svc.config.max_frame
    );
    let refuse = |e: request_body::BodyError| {
        let (code, message) = e.answer(limit, &setting, body_timeout);
        error(code, &service, message, json!({"limit": limit}))
    };
    if let Err(e) = request_body::check_head(req.headers(), limit) {
        return refuse(e);
    }
    let body = match request_body::read(req.into_body(), limit, body_timeout).await {
        Ok(b) => b,
        Err(e) => return refuse(e),
    };
    let t = Instant::now();
    let rx = dispatcher.submit(method.clone(), content_type, body);
    let outcome = rx.await.unwrap_or(Outcome::ShuttingDown);
    let m = &shared.supervisor.metrics;
    m.requests
        .get_or_create(&crate::daemon::metrics::RequestLabels {
            service: service.clone(),
            method: method.clone(),
            outcome: outcome.label().into(),
        })
        .inc();
    m.latency
        .get_or_create(&crate::daemon::metrics::MethodLabels {
            service: service.clone(),
            method: method.clone(),
        })
        .observe(t.elapsed().as_secs_f64());
    let ctx = failure::Context {
        service: &service,
        method: &method,
        expose: shared.config.instance.expose_errors,
        request_timeout: svc.config.request_timeout,
        max_queue: svc.config.max_queue,
        queue_timeout: svc.config.queue_timeout,
    };
    match failure::of(outcome, &ctx) {
        Verdict::Failed(f) => {
            let code = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = error(code, &service, f.message, f.cause);
            if let Some(after) = f.retry_after {
                let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
            }
            r
        }
        Verdict::Stream {
            content_type,
            items,
        } => {
            let body = axum::body::Body::new(super::stream_body::StreamBody::new(items, sse));
            let mut r = (StatusCode::OK, body).into_response();
            let h = r.headers_mut();
            if sse {
                h.insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/event-stream"),
                );
                h.insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("no-cache"),
                );
            } else if let Ok(v) = header::HeaderValue::from_str(&content_type) {
                h.insert(header::CONTENT_TYPE, v);
            }
            r
        }
        Verdict::Answer { content_type, body } => {
            let mut r = (StatusCode::OK, body).into_response();
            if let Ok(v) = header::HeaderValue::from_str(&content_type) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
    }
}
