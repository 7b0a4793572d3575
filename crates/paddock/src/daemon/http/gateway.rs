//! The HTTP gateway: health, readiness and status routes (and, with worker
//! services, the model routes). Binds loopback unless an auth token is configured.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::daemon::handles::SharedRef;

pub fn router(shared: SharedRef) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/ui", get(ui))
        .route("/v1/{service}", post(super::calls::call_default))
        .route("/v1/{service}/{method}", post(super::calls::call_method))
        .merge(super::jobs::routes())
        .merge(admin_routes(&shared))
        .fallback(not_found)
        // The model and job routes read their bodies themselves, within their
        // service's limits (request_body); every other route takes small ones.
        .layer(DefaultBodyLimit::max(64 << 10));
    // The bearer-token check only exists where a token is configured: the common
    // loopback case pays nothing for it.
    if shared.config.instance.auth_token.is_some() {
        r = r.layer(middleware::from_fn_with_state(shared.clone(), auth));
    }
    r.with_state(shared)
}

/// Whether the request carried the instance's token (set by `auth`; always true
/// when no token is configured).
#[derive(Clone, Copy)]
struct Authenticated(bool);

/// Compares secrets in time that depends on their length only, not on where they
/// first differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    diff == 0
}

/// The token of an `Authorization: Bearer TOKEN` value. The scheme is matched
/// without regard to case (RFC 9110 §11.1), and one or more spaces may follow it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

async fn auth(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &shared.config.instance.auth_token {
        let authenticated = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .is_some_and(|t| same_secret(t.as_bytes(), token.as_bytes()));
        // Orchestrators' probes carry no token: they get the verdict, not the details.
        // The dashboard's page holds no data: it asks for the token and sends it.
        let probe = matches!(req.uri().path(), "/healthz" | "/readyz" | "/ui");
        req.extensions_mut().insert(Authenticated(authenticated));
        if !authenticated && !probe {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "missing or wrong bearer token (instance.auth_token)"})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// The operator routes (`/admin/*`) show log lines and change things: they need a
/// token on every instance. With `auth_token`, `auth` checks it for every route;
/// without one, `operator` asks for the instance's own token, since every account
/// on the machine can reach 127.0.0.1.
fn admin_routes(shared: &SharedRef) -> Router<SharedRef> {
    let routes = super::admin::routes();
    if shared.config.instance.auth_token.is_some() {
        return routes;
    }
    routes.route_layer(middleware::from_fn_with_state(shared.clone(), operator))
}

/// The operator token's check for `/admin/*` on an instance without `auth_token`.
async fn operator(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    if !given.is_some_and(|t| same_secret(t.as_bytes(), shared.operator_token.as_bytes())) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "operator routes (/admin/...) need Authorization: Bearer with the instance's operator token: `paddock token` prints it"})),
        )
            .into_response();
    }
    next.run(req).await
}

async fn healthz(
    State(shared): State<SharedRef>,
    auth: Option<axum::Extension<Authenticated>>,
) -> impl IntoResponse {
    if auth.is_some_and(|a| !a.0.0) {
        return Json(json!({"status": "alive"}));
    }
    Json(
        json!({"status": "alive", "pid": shared.pid, "instance": shared.config.instance.name.to_string()}),
    )
}

async fn readyz(
    State(shared): State<SharedRef>,
    auth: Option<axum::Extension<Authenticated>>,
) -> Response {
    let services = shared.supervisor.status();
    if auth.is_some_and(|a| !a.0.0) {
        let ready = services.iter().all(|s| s.state.serving());
        let code = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return (code, Json(json!({"ready": ready}))).into_response();
    }
    let not_ready: Vec<_> = services
        .iter()
        .filter(|s| !s.state.serving())
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

/// The dashboard: one page, embedded at build time, that polls /status, /metrics
/// and the job routes with the token the user gives it.
async fn ui() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("ui/index.html"),
    )
}

/// The gateway as an OpenAPI 3.1 document, with the handlers the workers announced.
async fn openapi(State(shared): State<SharedRef>) -> impl IntoResponse {
    let handlers = shared
        .config
        .services
        .iter()
        .filter_map(|s| {
            let svc = shared.supervisor.service(s.name.as_str())?;
            Some((s.name.to_string(), svc.dispatcher.as_ref()?.handlers()))
        })
        .collect();
    Json(crate::openapi::document(&shared.config, &handlers))
}

async fn status(State(shared): State<SharedRef>) -> impl IntoResponse {
    Json(shared.status())
}

async fn metrics(State(shared): State<SharedRef>) -> Response {
    let m = &shared.supervisor.metrics;
    if let Some(jobs) = &shared.jobs {
        m.jobs_waiting.set(jobs.store.waiting() as i64);
    }
    let gpus = crate::gpu::GpuStatus::read(shared.supervisor.gpu.as_ref());
    m.gpu_driver.set(i64::from(gpus.unavailable.is_none()));
    for d in &gpus.devices {
        let device = crate::daemon::metrics::DeviceLabels {
            device: d.index.to_string(),
        };
        m.gpu_memory_used
            .get_or_create(&device)
            .set(d.memory_used_bytes as i64);
        m.gpu_memory_total
            .get_or_create(&device)
            .set(d.memory_total_bytes as i64);
        if let Some(p) = d.utilization_percent {
            m.gpu_utilization
                .get_or_create(&device)
                .set(f64::from(p) / 100.0);
        }
    }
    shared.supervisor.memory();
    for s in shared.supervisor.status() {
        if let Some(x) = &s.scaling {
            m.service_loaded
                .get_or_create(&crate::daemon::metrics::ServiceLabels {
                    service: s.name.clone(),
                })
                .set(i64::from(x.loaded));
        }
        for w in &s.workers {
            if let Some(bytes) = w.gpu_memory_bytes {
                m.worker_gpu_memory
                    .get_or_create(&crate::daemon::metrics::WorkerLabels {
                        service: s.name.clone(),
                        worker: w.index.to_string(),
                    })
                    .set(bytes as i64);
            }
        }
        for state in crate::status::Phase::ALL {
            let n = s.workers.iter().filter(|w| w.state == state).count();
            m.workers
                .get_or_create(&crate::daemon::metrics::StateLabels {
                    service: s.name.clone(),
                    state: state.as_str().into(),
                })
                .set(n as i64);
        }
    }
    if let Some(j) = &shared.jobs {
        // A slow store must not hold the scrape: the job gauges keep their last
        // values then.
        let read = tokio::time::timeout(Duration::from_secs(2), j.stats(&shared.config)).await;
        match read {
            Ok(Ok(stats)) => stats.record(m),
            Ok(Err(e)) => tracing::warn!("job figures for /metrics: {e}"),
            Err(_) => tracing::warn!("job figures for /metrics: the store did not answer in 2s"),
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

async fn not_found(req: Request) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("no route for {} {}", req.method(), req.uri().path())})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_secret_compares_whole_values() {
        assert!(super::same_secret(b"abc123", b"abc123"));
        assert!(!super::same_secret(b"abc123", b"abc124"));
        assert!(!super::same_secret(b"abc123", b"abc12"));
        assert!(!super::same_secret(b"", b"x"));
    }

    #[test]
    fn the_bearer_scheme_is_matched_without_regard_to_case() {
        for v in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR   t0k"] {
            assert_eq!(super::bearer_token(v), Some("t0k"), "{v}");
        }
        for v in ["Basic t0k", "Bearert0k", "t0k", "Bearer"] {
            assert_ne!(super::bearer_token(v), Some("t0k"), "{v}");
        }
    }
}
