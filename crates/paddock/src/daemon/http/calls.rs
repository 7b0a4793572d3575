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
use crate::daemon::messages::{Outcome, check_request};
use crate::daemon::shared::SharedRef;

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
    if let Err(message) = check_request(&method, &content_type) {
        return error(StatusCode::BAD_REQUEST, &service, message, json!(null));
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
    let timeout = svc.config.request_timeout.as_millis();
    let expose = shared.config.instance.expose_errors;
    match outcome {
        Outcome::Ok { content_type, body } => {
            let mut r = (StatusCode::OK, body).into_response();
            if let Ok(v) = header::HeaderValue::from_str(&content_type) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
        Outcome::HandlerError {
            message,
            traceback,
            worker,
            error_id,
        } => {
            let cause = if expose {
                json!({"error_id": error_id, "worker": worker, "message": message, "traceback": traceback})
            } else {
                json!({"error_id": error_id, "worker": worker})
            };
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &service,
                format!(
                    "handler {method:?} failed (error id {error_id}; the service's log has the details)"
                ),
                cause,
            )
        }
        Outcome::Crashed { cause } => error(
            StatusCode::BAD_GATEWAY,
            &service,
            format!(
                "worker {} crashed while serving the request: it {}",
                cause.worker(),
                cause.description()
            ),
            cause.for_client(expose, &service),
        ),
        Outcome::Poison { cause } => error(
            StatusCode::BAD_GATEWAY,
            &service,
            format!(
                "poison request: it killed {} workers and will not be retried",
                cause.workers_killed()
            ),
            cause.for_client(expose, &service),
        ),
        Outcome::DeadlineKilled { cause } => error(
            StatusCode::GATEWAY_TIMEOUT,
            &service,
            format!("deadline of {timeout}ms passed; the worker was killed and is being replaced"),
            json!(cause),
        ),
        Outcome::BadRequest { message, code } => error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
            &service,
            message,
            json!({"kind": "bad_request"}),
        ),
        Outcome::NotFound { message } => {
            error(StatusCode::NOT_FOUND, &service, message, json!(null))
        }
        Outcome::Stream {
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
        Outcome::Refused { status, message } => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &service,
            message,
            json!({"kind": if status == 400 { "bad_request" } else { "refused" }}),
        ),
        Outcome::QueueFull => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &service,
            format!("queue full ({} requests waiting)", svc.config.max_queue),
            json!({"max_queue": svc.config.max_queue}),
        ),
        Outcome::QueueTimeout => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &service,
            format!(
                "no worker became free within queue_timeout ({}ms)",
                svc.config.queue_timeout.as_millis()
            ),
            json!(null),
        ),
        Outcome::Unavailable {
            reason,
            retry_after,
        } => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                &service,
                format!("service {service:?} has no worker that can serve: it is crash-looping"),
                json!({"state": crate::status::Phase::CrashLooping, "reason": reason, "retry_after_s": retry_after.as_secs_f64()}),
            );
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
            r
        }
        Outcome::ShuttingDown => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &service,
            "paddock is stopping".into(),
            json!(null),
        ),
    }
}
