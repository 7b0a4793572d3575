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

use super::errors::{error, job_error, no_jobs};
use crate::daemon::coordinator::ReloadError;
use crate::daemon::handles::SharedRef;

pub fn routes() -> Router<SharedRef> {
    Router::new()
        .route("/admin/services/{name}/reload", post(reload))
        .route("/admin/jobs/{id}/retry", post(retry))
        .route("/admin/jobs/{id}/cancel", post(super::jobs::cancel))
        .route("/admin/services/{name}/logs", axum::routing::get(logs))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    worker: Option<u32>,
    lines: Option<usize>,
}

/// The last lines of a service's log (of one worker with `worker`): what `paddock
/// logs` shows, for the dashboard.
async fn logs(
    State(shared): State<SharedRef>,
    Path(name): Path<String>,
    q: Result<axum::extract::Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let Some(svc) = shared.supervisor.service(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no service named {name:?}"));
    };
    if let Some(w) = q.worker
        && w >= svc.config.workers
    {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "service {name:?} has no worker {w}: its workers are 0 to {}",
                svc.config.workers.saturating_sub(1)
            ),
        );
    }
    if let Some(n) = q.lines
        && !(1..=1000).contains(&n)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("lines {n} is out of range: 1 to 1000"),
        );
    }
    let n = q.lines.unwrap_or(50);
    let path = shared.paths.logs.join(format!("{name}.log"));
    // The tail of the file is enough: at most 1 MiB is read.
    let text = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(path).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(1 << 20))).ok()?;
        let mut buf = vec![];
        f.read_to_end(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    let tag = q.worker.map(|w| format!(" {name}/{w} "));
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| tag.as_ref().is_none_or(|t| l.contains(t.as_str())))
        .collect();
    let keep = lines.len().saturating_sub(n);
    lines.drain(..keep);
    Json(json!({"service": name, "worker": q.worker, "lines": lines})).into_response()
}

/// Replaces the service's workers one at a time (as `paddock reload`, for one service).
async fn reload(State(shared): State<SharedRef>, Path(name): Path<String>) -> Response {
    match shared.supervisor.reload_service(&name).await {
        Ok(replaced) => Json(json!({"service": name, "replaced": replaced})).into_response(),
        Err(e @ ReloadError::NoService(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => error(
            StatusCode::CONFLICT,
            format!("reload of {name} failed: {e}"),
        ),
    }
}

/// Queues a dead or cancelled job again.
async fn retry(State(shared): State<SharedRef>, Path(id): Path<String>) -> Response {
    let Some(jobs) = &shared.jobs else {
        return no_jobs();
    };
    match jobs.retry(id).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => job_error(e),
    }
}
