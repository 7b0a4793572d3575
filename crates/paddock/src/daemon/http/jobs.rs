//! The job routes of the gateway (the HTTP side of `daemon::jobs`, kept apart so
//! that the job store depends on nothing of the gateway):
//!
//! - `POST /v1/jobs/{service}[/{method}]` → 202 `{"id", "state": "queued"}`; with an
//!   `Idempotency-Key` header a repeat returns the same job (200); `?delay=` or
//!   `?run_at=` make it `scheduled` until then, `?priority=` orders claims;
//! - `GET /v1/jobs?state=&service=&limit=&after=` → a page of jobs and `next`;
//! - `GET /v1/jobs/{id}` → state, attempts, timestamps, each attempt's cause; with
//!   `?wait=30s`, as soon as the job is finished or after the wait (a long-poll);
//! - `GET /v1/jobs/{id}/result` → the raw result with its content type (409 naming
//!   the state before it is done); with `?wait=`, as soon as the job is finished;
//! - `DELETE /v1/jobs/{id}` → cancels a queued, scheduled, claimed or running job.

use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::errors::{error, job_error, no_jobs, store};
use super::request_body;
use crate::daemon::handles::SharedRef;
use crate::daemon::jobs::{JobError, JobState, ListQuery, NewJob};
use crate::daemon::messages::InvalidRequest;

pub fn routes() -> Router<SharedRef> {
    Router::new()
        .route("/v1/jobs", get(list))
        .route(
            "/v1/jobs/{a}",
            get(show).post(enqueue_default).delete(cancel),
        )
        .route("/v1/jobs/{a}/{b}", get(result).post(enqueue_method))
}

/// The longest `Idempotency-Key` paddock keeps.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The request's `Idempotency-Key`: none, or one value of 1 to 255 visible ASCII
/// characters. A key paddock would not honour exactly is refused (400), never
/// dropped: a dropped key makes a retry a second job.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, InvalidRequest> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(InvalidRequest(
            "more than one Idempotency-Key header: send one".into(),
        ));
    }
    let bytes = value.as_bytes();
    let rule = format!(
        "an Idempotency-Key is 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters (letters, digits, punctuation; no spaces)"
    );
    if bytes.is_empty() {
        return Err(InvalidRequest(format!(
            "the Idempotency-Key is empty: {rule}"
        )));
    }
    if bytes.len() > MAX_IDEMPOTENCY_KEY {
        return Err(InvalidRequest(format!(
            "the Idempotency-Key is {} bytes long: {rule}",
            bytes.len()
        )));
    }
    if let Some(b) = bytes.iter().find(|b| !(0x21..0x7f).contains(*b)) {
        return Err(InvalidRequest(format!(
            "the Idempotency-Key holds the byte 0x{b:02x}: {rule}; encode other text first (for example as hex or base64url)"
        )));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

async fn enqueue_default(
    State(shared): State<SharedRef>,
    Path(service): Path<String>,
    req: Request,
) -> Response {
    enqueue(shared, service, "predict".into(), req).await
}

async fn enqueue_method(
    State(shared): State<SharedRef>,
    Path((service, method)): Path<(String, String)>,
    req: Request,
) -> Response {
    enqueue(shared, service, method, req).await
}

async fn enqueue(shared: SharedRef, service: String, method: String, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let Some(store) = store(&shared) else {
        return no_jobs();
    };
    if let Some(reason) = shared.jobs_lost.borrow().clone() {
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, reason);
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
        return r;
    }
    if let Some((why, size)) = shared.jobs.as_ref().and_then(|j| j.full()) {
        let limit = shared.config.instance.job_store_max_bytes;
        return (
            StatusCode::INSUFFICIENT_STORAGE,
            Json(json!({"error": why, "limit": limit, "size": size})),
        )
            .into_response();
    }
    let Some(svc) = shared
        .supervisor
        .service(&service)
        .filter(|s| s.dispatcher.is_some())
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no worker service named {service:?}"),
        );
    };
    let header_str = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    // An oversized job is refused before anything is stored: from the head where
    // it declares its length, else as soon as it passes the limit.
    let content_type = header_str(header::CONTENT_TYPE.as_str())
        .unwrap_or_else(|| "application/octet-stream".into());
    let frame_limit = request_body::online_limit(svc.config.max_frame, &method, &content_type);
    let (limit, setting) = if svc.config.job_max_body <= frame_limit as u64 {
        (
            svc.config.job_max_body as usize,
            format!("services.{service}.job_max_body"),
        )
    } else {
        (
            frame_limit,
            format!("services.{service}.max_frame, less the request's framing"),
        )
    };
    let body_timeout = shared.config.instance.body_timeout;
    let body = match request_body::check_head(&headers, limit) {
        Ok(()) => request_body::read(body, limit, body_timeout).await,
        Err(e) => Err(e),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let (code, message) = e.answer(limit, &setting, body_timeout);
            return error(code, message);
        }
    };
    let idempotency_key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let timing = match Query::<EnqueueQuery>::try_from_uri(&parts.uri) {
        Ok(Query(q)) => q.timing(crate::daemon::jobs::now_ms()),
        Err(e) => Err(InvalidRequest(e.body_text())),
    };
    let (run_after_ms, priority) = match timing {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.0),
    };
    let body_len = body.len();
    let job = NewJob {
        service: service.clone(),
        method,
        content_type,
        body: body.to_vec(),
        idempotency_key,
        max_attempts: svc.config.max_attempts,
        run_after_ms,
        priority,
    };
    if let Err(e) = crate::daemon::messages::check_request(&job.method, &job.content_type) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    // A method no worker has (once one told us its handlers) would only die later.
    if let Some(d) = &svc.dispatcher
        && let Some(methods) = d.methods()
        && !methods.iter().any(|m| m == &job.method)
    {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "service {service:?} has no handler {:?} (it has: {})",
                job.method,
                methods.join(", ")
            ),
        );
    }
    match store.enqueue(job).await {
        Ok((view, created)) => {
            if created && let Some(j) = &shared.jobs {
                j.size.added(body_len);
                if let Some(p) = j.pumps.get(&service) {
                    p.wake();
                }
            }
            let code = if created {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            (
                code,
                Json(json!({"id": view.id, "state": view.state, "created": created})),
            )
                .into_response()
        }
        Err(e) => job_error(e),
    }
}

async fn list(
    State(shared): State<SharedRef>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // A malformed query string is the client's mistake, said in the same JSON shape
    // as every other error.
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if let Some(state) = &q.state
        && crate::daemon::jobs::JobState::parse(state).is_none()
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "no job state {state:?}: queued, scheduled, claimed, running, done, dead or cancelled"
            ),
        );
    }
    if let Some(limit) = q.limit
        && !(1..=1000).contains(&limit)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit {limit} is out of range: 1 to 1000"),
        );
    }
    let Some(store) = store(&shared) else {
        return no_jobs();
    };
    // A service that is neither configured here nor in the store (a shared
    // PostgreSQL store holds other daemons' services too) is a mistake, not an
    // empty page.
    if let Some(service) = &q.service
        && shared.supervisor.service(service).is_none()
    {
        let probe = ListQuery {
            service: Some(service.clone()),
            limit: Some(1),
            ..ListQuery::default()
        };
        match store.list(probe).await {
            Ok((jobs, _)) if jobs.is_empty() => {
                let names: Vec<String> = shared
                    .config
                    .services
                    .iter()
                    .filter(|s| s.kind == crate::config::Kind::Worker)
                    .map(|s| s.name.to_string())
                    .collect();
                return error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no service named {service:?} here or in the job store (this instance's worker services: {})",
                        if names.is_empty() {
                            "none".into()
                        } else {
                            names.join(", ")
                        }
                    ),
                );
            }
            Ok(_) => {}
            Err(e) => return job_error(e),
        }
    }
    match store.list(q).await {
        Ok((jobs, next)) => Json(json!({"jobs": jobs, "next": next})).into_response(),
        Err(e) => job_error(e),
    }
}

/// Whether a job id that is not found was made before the shortest
/// `job_retention` (ids carry their creation time: `j` and 11 hex digits of
/// milliseconds). Cheap, and says "expired" only when it must have been pruned if
/// it ever existed and finished; a queued or running job is never pruned.
fn expired(shared: &SharedRef, id: &str) -> bool {
    let Some(created) = id
        .strip_prefix('j')
        .and_then(|rest| rest.get(..11))
        .and_then(|hex| i64::from_str_radix(hex, 16).ok())
    else {
        return false;
    };
    let shortest = shared
        .config
        .services
        .iter()
        .filter_map(|s| s.job_retention)
        .min();
    shortest.is_some_and(|keep| created < crate::daemon::jobs::now_ms() - keep.as_millis() as i64)
}

/// The longest `?wait=` a client may ask: past it the answer comes with the job's
/// state of the moment (a client waits again).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How long past its wait a long-poll waits for the store's answer.
const READ_GRACE: Duration = Duration::from_secs(5);

/// The answer of a long-poll whose store did not answer in time.
fn store_silent() -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the job store did not answer within the wait (is it reachable? see the daemon log)".into(),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// `GET /v1/jobs/{id}`'s query: `wait`, and nothing else.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowQuery {
    wait: Option<String>,
}

/// Seconds ("30", "0.5") or a duration ("30s", "250ms", "2h"); None for anything
/// else (negative, not finite, no unit on a non-number).
fn seconds_or_duration(text: &str) -> Option<Duration> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Some(Duration::from_secs_f64(secs.min(1e9))),
        Ok(_) => None,
        Err(_) => crate::config::values::Dur::parse(text).ok().map(|d| d.0),
    }
}

/// The furthest ahead a job may be scheduled (`delay`, `run_at`).
const MAX_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);

/// `POST /v1/jobs/...`'s query: when the job may run, and its priority (query
/// parameters, so that any HTTP client can send them; docs/jobs.md).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueQuery {
    /// Seconds or a duration from now.
    delay: Option<String>,
    /// An RFC 3339 timestamp.
    run_at: Option<String>,
    /// An integer, higher first.
    priority: Option<String>,
}

impl EnqueueQuery {
    /// (not before, ms since the epoch; priority), or what is wrong with them.
    fn timing(&self, now_ms: i64) -> Result<(Option<i64>, i32), InvalidRequest> {
        let at = match (&self.delay, &self.run_at) {
            (Some(_), Some(_)) => {
                return Err(InvalidRequest(
                    "send delay or run_at, not both".into(),
                ));
            }
            (Some(d), None) => {
                let d = seconds_or_duration(d).ok_or_else(|| {
                    InvalidRequest(format!(
                        "delay={d:?} is not a duration: write seconds (90) or a duration (90s, 15m, 2h, 3d)"
                    ))
                })?;
                Some(now_ms.saturating_add(d.as_millis().min(i64::MAX as u128) as i64))
            }
            (None, Some(t)) => Some(crate::timefmt::parse_rfc3339(t).ok_or_else(|| {
                InvalidRequest(format!(
                    "run_at={t:?} is not an RFC 3339 time: write it as 2026-12-06T18:30:00Z (or with an offset, +01:00)"
                ))
            })?),
            (None, None) => None,
        };
        if let Some(at) = at
            && at - now_ms > MAX_AHEAD.as_millis() as i64
        {
            return Err(InvalidRequest(
                "a job can be scheduled at most 366 days ahead".into(),
            ));
        }
        let priority = match &self.priority {
            None => 0,
            Some(p) => p.trim().parse::<i32>().map_err(|_| {
                InvalidRequest(format!(
                    "priority={p:?} is not an integer (-2147483648 to 2147483647; higher runs first)"
                ))
            })?,
        };
        Ok((at, priority))
    }
}

/// The wait a `GET /v1/jobs/{id}[/result]` asks for (none: zero), or why it is a
/// 400.
fn wait_of(
    q: Result<Query<ShowQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Duration, InvalidRequest> {
    let Query(q) = q.map_err(|e| InvalidRequest(e.body_text()))?;
    q.wait
        .as_deref()
        .map(wait_param)
        .transpose()
        .map(Option::unwrap_or_default)
}

/// A `?wait=`: seconds ("30", "0.5") or a duration ("30s", "250ms"), capped at
/// [`MAX_WAIT`].
fn wait_param(text: &str) -> Result<Duration, InvalidRequest> {
    seconds_or_duration(text).map(|d| d.min(MAX_WAIT)).ok_or_else(|| {
        InvalidRequest(format!(
            "wait={text:?} is not a duration: write seconds (30) or a duration (30s, 250ms); at most 60s"
        ))
    })
}

/// A job's record; with `?wait=`, answered as soon as it is finished (done, dead or
/// cancelled) or when the wait is over, whichever comes first — and at once when the
/// daemon begins to stop. The store wakes the wait (`jobs::finishes`): nothing polls.
async fn show(
    State(shared): State<SharedRef>,
    Path(id): Path<String>,
    q: Result<Query<ShowQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let wait = match wait_of(q) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.0),
    };
    let Some(store) = store(&shared) else {
        return no_jobs();
    };
    let Some(read) = long_poll(
        &shared,
        &id,
        wait,
        || store.get(id.clone()),
        |read| matches!(read, Ok(v) if !JobState::FINISHED.contains(&v.state)),
    )
    .await
    else {
        return store_silent();
    };
    match read {
        Ok(v) => Json(v).into_response(),
        Err(JobError::NotFound(_)) if expired(&shared, &id) => error(
            StatusCode::NOT_FOUND,
            format!(
                "job {id} expired: it was created before every service's job_retention, and finished jobs are deleted after it"
            ),
        ),
        Err(e) => job_error(e),
    }
}

/// Reads with `read` until `open` says the job is finished, the wait is over, or the
/// daemon begins to stop; the last read. The store wakes the wait
/// (`jobs::finishes`): nothing polls.
async fn long_poll<T, F: Future<Output = T>>(
    shared: &SharedRef,
    id: &str,
    wait: Duration,
    read: impl Fn() -> F,
    open: impl Fn(&T) -> bool,
) -> Option<T> {
    let Some(store) = store(shared) else {
        return Some(read().await);
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut stopping = shared.shutdown.subscribe();
    loop {
        // Registered before the read: a finish committed in between still wakes it.
        let mut waiter = store.wait_for(id);
        // A store that does not answer (PostgreSQL down, reconnecting) holds the
        // request no longer than its wait and a grace, nor past a stop.
        let stopped = *stopping.borrow();
        let last = tokio::select! {
            last = read() => last,
            _ = tokio::time::sleep_until(deadline + READ_GRACE) => return None,
            _ = stopping.wait_for(|s| *s), if !stopped => return None,
        };
        if !open(&last) || *stopping.borrow() || tokio::time::Instant::now() >= deadline {
            return Some(last);
        }
        tokio::select! {
            _ = waiter.finished() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    }
}

/// A done job's result; with `?wait=`, as soon as the job is finished (the answer
/// of a job that is not `done` is a 409 naming its state).
async fn result(
    State(shared): State<SharedRef>,
    Path((id, what)): Path<(String, String)>,
    q: Result<Query<ShowQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if what != "result" {
        return error(
            StatusCode::NOT_FOUND,
            format!("no route GET /v1/jobs/{id}/{what}"),
        );
    }
    let wait = match wait_of(q) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.0),
    };
    let Some(store) = store(&shared) else {
        return no_jobs();
    };
    let Some(read) = long_poll(&shared, &id, wait, || store.result(id.clone()), |read| {
        matches!(read, Err(JobError::Conflict { state, .. }) if !JobState::FINISHED.contains(state))
    })
    .await
    else {
        return store_silent();
    };
    match read {
        Ok((content_type, body)) => {
            let mut r = (StatusCode::OK, body).into_response();
            if let Ok(v) = header::HeaderValue::from_str(&content_type) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
        Err(e) => job_error(e),
    }
}

/// Cancels a queued, scheduled, claimed or running job: `DELETE /v1/jobs/{id}`, and the operator's
/// `POST /admin/jobs/{id}/cancel`.
pub(super) async fn cancel(State(shared): State<SharedRef>, Path(id): Path<String>) -> Response {
    let Some(jobs) = &shared.jobs else {
        return no_jobs();
    };
    match jobs.cancel(id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => job_error(e),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    fn key(values: &[&[u8]]) -> Result<Option<String>, crate::daemon::messages::InvalidRequest> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("idempotency-key", HeaderValue::from_bytes(v).unwrap());
        }
        super::idempotency_key(&h)
    }

    #[test]
    fn an_idempotency_key_is_kept_exactly_or_refused() {
        assert_eq!(key(&[]), Ok(None));
        assert_eq!(key(&[b"order-7"]), Ok(Some("order-7".into())));
        let longest = "k".repeat(super::MAX_IDEMPOTENCY_KEY);
        assert_eq!(key(&[longest.as_bytes()]), Ok(Some(longest.clone())));
        for bad in [
            "caf\u{e9}-order-7".as_bytes(),
            b"\xff",
            b"",
            b"two words",
            "k".repeat(super::MAX_IDEMPOTENCY_KEY + 1).as_bytes(),
        ] {
            let e = key(&[bad]).unwrap_err().to_string();
            assert!(e.contains("1 to 255 visible ASCII"), "{e}");
        }
        assert!(key(&[b"a", b"b"]).is_err());
    }
}
