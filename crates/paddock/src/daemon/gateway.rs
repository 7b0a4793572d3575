//! The HTTP gateway: health, readiness and status routes (and, with worker
//! services, the model routes). Binds loopback unless an auth token is configured.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::shared::SharedRef;

pub fn router(shared: SharedRef) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), auth))
        .with_state(shared)
}

async fn auth(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &shared.config.instance.auth_token {
        let ok = req.uri().path() == "/healthz"
            || headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| t == token);
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "missing or wrong bearer token (instance.auth_token)"})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

async fn healthz(State(shared): State<SharedRef>) -> impl IntoResponse {
    Json(
        json!({"status": "alive", "pid": shared.pid, "instance": shared.config.instance.name.to_string()}),
    )
}

async fn readyz(State(shared): State<SharedRef>) -> Response {
    let services = shared.supervisor.status();
    let not_ready: Vec<_> = services
        .iter()
        .filter(|s| s.state != "ready" && s.state != "degraded")
        .map(|s| json!({"service": s.name, "state": s.state, "reason": s.reason}))
        .collect();
    if not_ready.is_empty() {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"ready": false, "error": "not every service has a ready worker", "services": not_ready})),
        )
            .into_response()
    }
}

async fn status(State(shared): State<SharedRef>) -> impl IntoResponse {
    Json(shared.status())
}

async fn not_found(req: Request) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("no route for {} {}", req.method(), req.uri().path())})),
    )
        .into_response()
}
