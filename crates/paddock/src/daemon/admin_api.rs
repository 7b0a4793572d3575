//! Operator actions over HTTP, all under the reserved `/admin/` prefix (no service
//! may be named `admin`), so they can never collide with `/v1/{service}/{method}` or
//! the job routes: reload a service, retry or cancel a job. They are the dashboard's
//! actions, and sit behind the instance's `auth_token` like every route but the
//! probes.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::jobs_api::{error, job_error, no_jobs, store};
use super::shared::SharedRef;

pub fn routes() -> Router<SharedRef> {
    Router::new()
        .route("/admin/services/{name}/reload", post(reload))
        .route("/admin/jobs/{id}/retry", post(retry))
        .route("/admin/jobs/{id}/cancel", post(cancel))
}

/// Replaces the service's workers one at a time (as `paddock reload`, for one service).
async fn reload(State(shared): State<SharedRef>, Path(name): Path<String>) -> Response {
    if shared.supervisor.service(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no service named {name:?}"));
    }
    match shared.supervisor.reload_service(&name).await {
        Ok(replaced) => Json(json!({"service": name, "replaced": replaced})).into_response(),
        Err(e) => error(
            StatusCode::CONFLICT,
            format!("reload of {name} failed: {e}"),
        ),
    }
}

/// Queues a dead or cancelled job again.
async fn retry(State(shared): State<SharedRef>, Path(id): Path<String>) -> Response {
    let Some(store) = store(&shared) else {
        return no_jobs();
    };
    match store.retry(id).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => job_error(e),
    }
}

/// Cancels a queued job.
async fn cancel(State(shared): State<SharedRef>, Path(id): Path<String>) -> Response {
    let Some(store) = store(&shared) else {
        return no_jobs();
    };
    match store.cancel(id).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => job_error(e),
    }
}
