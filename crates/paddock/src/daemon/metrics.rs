//! Prometheus metrics, served on `GET /metrics` in the text format.
//!
//! The metric values are atomics inside prometheus-client; every actor records into
//! them directly. Gauges that describe state (workers by state) are set at scrape
//! time from the actors' published status, so they can never drift.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub method: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub service: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub service: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub service: String,
    pub cause: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub queue_depth: Family<ServiceLabels, Gauge>,
    pub in_flight: Family<ServiceLabels, Gauge>,
    pub workers: Family<StateLabels, Gauge>,
    pub restarts: Family<CauseLabels, Counter>,
    pub deadline_kills: Family<ServiceLabels, Counter>,
    pub load_seconds: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    pub crash_to_ready: Family<ServiceLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("paddock");
        let m = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            in_flight: Family::default(),
            workers: Family::default(),
            restarts: Family::default(),
            deadline_kills: Family::default(),
            load_seconds: Family::new_with_constructor(seconds_histogram),
            crash_to_ready: Family::new_with_constructor(seconds_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests by service, method and outcome",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency through the gateway",
            m.latency.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for a worker",
            m.queue_depth.clone(),
        );
        registry.register(
            "in_flight",
            "Requests being served by a worker",
            m.in_flight.clone(),
        );
        registry.register("workers", "Worker processes by state", m.workers.clone());
        registry.register(
            "restarts",
            "Worker replacements by cause",
            m.restarts.clone(),
        );
        registry.register(
            "deadline_kills",
            "Workers killed because a request passed its deadline",
            m.deadline_kills.clone(),
        );
        registry.register(
            "model_load_seconds",
            "Seconds from spawn to READY",
            m.load_seconds.clone(),
        );
        registry.register(
            "crash_to_ready_seconds",
            "Seconds from a worker's unrequested exit to its replacement being ready",
            m.crash_to_ready.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn service(service: &str) -> ServiceLabels {
        ServiceLabels {
            service: service.to_string(),
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
