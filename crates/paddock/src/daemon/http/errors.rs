//! The answers every HTTP route shares: the JSON error shapes, and how a job store's
//! error becomes an HTTP status. One place, so that the model, job and operator
//! routes answer the same mistake the same way.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::daemon::handles::SharedRef;
use crate::daemon::jobs::JobError;

/// `{"error": message}`: an answer about the request or the instance.
pub fn error(code: StatusCode, message: String) -> Response {
    (code, Json(json!({"error": message}))).into_response()
}

/// `{"error", "service", "cause"}`: an answer about a call to `service`. A 503 says
/// when to try again (`Retry-After: 1`).
pub fn service_error(
    code: StatusCode,
    service: &str,
    message: String,
    cause: serde_json::Value,
) -> Response {
    let mut r = (
        code,
        Json(json!({"error": message, "service": service, "cause": cause})),
    )
        .into_response();
    if code == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

/// A job store's error as an answer: 404 (no such job), 409 (its state forbids the
/// change, or its Idempotency-Key was used for another request), 503 (the store).
pub fn job_error(e: JobError) -> Response {
    match e {
        JobError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        // The job's state too, for clients that act on it (`paddock.Client`).
        JobError::Conflict { state, .. } => (
            StatusCode::CONFLICT,
            axum::Json(serde_json::json!({"error": e.to_string(), "state": state})),
        )
            .into_response(),
        JobError::KeyReused { .. } => error(StatusCode::CONFLICT, e.to_string()),
        // The store is busy or out of reach: it is worth trying again soon.
        JobError::Store(_) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            r
        }
    }
}

/// The answer of a job route on an instance without worker services.
pub fn no_jobs() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "this instance has no worker services, so no jobs".into(),
    )
}

/// The job store, where the instance has one.
pub fn store(shared: &SharedRef) -> Option<&crate::daemon::jobs::Store> {
    shared.jobs.as_ref().map(|j| &j.store)
}
