//! Prometheus metrics, served on `GET /metrics` in the text format.
//!
//! The metric values are atomics inside prometheus-client; every actor records into
//! them directly. Gauges that describe state (workers by state) are set at scrape
//! time from the actors' published status, so they can never drift.

use std::sync::atomic::AtomicU64;

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
pub struct WorkerLabels {
    pub service: String,
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub service: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub service: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    pub service: String,
    /// up or down.
    pub direction: String,
    /// demand, min_workers, load, idle_timeout.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub service: String,
    pub cause: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn batch_size_histogram() -> Histogram {
    // 1, 2, 4, … 4096: one bucket per power of two up to the largest batch.
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
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
    /// Requests per batch sent to a worker, by batched method.
    pub batch_size: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// Requests sent in batches (its rate: items per second).
    pub batch_items: Family<MethodLabels, Counter>,
    /// From a batch's oldest request's arrival to the batch going to a worker.
    pub batch_wait: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// Batches split in halves after their worker died or hung.
    pub bisections: Family<MethodLabels, Counter>,
    /// Streamed answers by how they ended: done, failed, cancelled.
    pub streams: Family<OutcomeLabels, Counter>,
    /// Forks of worker processes that had several OS threads (FORK_WARNING).
    pub fork_warnings: Family<ServiceLabels, Counter>,
    /// GPU memory held by each worker's processes (set at scrape time).
    pub worker_gpu_memory: Family<WorkerLabels, Gauge>,
    /// 1 when NVML answers, 0 without an NVIDIA driver.
    pub gpu_driver: Gauge,
    /// GPU memory in use per device.
    pub gpu_memory_used: Family<DeviceLabels, Gauge>,
    /// GPU memory per device.
    pub gpu_memory_total: Family<DeviceLabels, Gauge>,
    /// How busy each GPU was, 0 to 1.
    pub gpu_utilization: Family<DeviceLabels, Gauge<f64, AtomicU64>>,
    /// Durable jobs by service and state (set at scrape time from the store).
    pub jobs: Family<StateLabels, Gauge>,
    /// The job store's size on disk.
    pub jobs_store_bytes: Gauge,
    /// `instance.job_store_max_size`.
    pub jobs_store_max_bytes: Gauge,
    /// The space the jobs take, as the limit sees it.
    pub jobs_store_used_bytes: Gauge,
    /// Clients waiting for a job to finish (`GET /v1/jobs/{id}?wait=`).
    pub jobs_waiting: Gauge,
    /// When each service's oldest finished job finished (Unix seconds).
    pub jobs_oldest_finished: Family<ServiceLabels, Gauge>,
    /// Finished jobs deleted by retention.
    pub jobs_pruned: Family<ServiceLabels, Counter>,
    /// When each service's last prune round ended (Unix seconds).
    pub jobs_last_prune: Family<ServiceLabels, Gauge>,
    /// 1 while a service has a worker loaded (set at scrape time).
    pub service_loaded: Family<ServiceLabels, Gauge>,
    /// Workers started because a request found none loaded.
    pub cold_starts: Family<ServiceLabels, Counter>,
    /// A cold start's spawn to READY.
    pub cold_start_seconds: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    /// Workers started or let go by scaling.
    pub scale_events: Family<ScaleLabels, Counter>,
    /// Idle workers stopped to make room in the memory budget.
    pub evictions: Family<ServiceLabels, Counter>,
    /// `instance.memory_budget` (0: none).
    pub memory_budget_bytes: Gauge,
    /// What the workers hold, as the budget counts it (set at scrape time).
    pub memory_used_bytes: Gauge,
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
            batch_size: Family::new_with_constructor(batch_size_histogram),
            batch_items: Family::default(),
            batch_wait: Family::new_with_constructor(latency_histogram),
            bisections: Family::default(),
            streams: Family::default(),
            fork_warnings: Family::default(),
            worker_gpu_memory: Family::default(),
            gpu_driver: Gauge::default(),
            gpu_memory_used: Family::default(),
            gpu_memory_total: Family::default(),
            gpu_utilization: Family::default(),
            jobs: Family::default(),
            jobs_store_bytes: Gauge::default(),
            jobs_store_max_bytes: Gauge::default(),
            jobs_store_used_bytes: Gauge::default(),
            jobs_waiting: Gauge::default(),
            jobs_oldest_finished: Family::default(),
            jobs_pruned: Family::default(),
            jobs_last_prune: Family::default(),
            service_loaded: Family::default(),
            cold_starts: Family::default(),
            cold_start_seconds: Family::new_with_constructor(seconds_histogram),
            scale_events: Family::default(),
            evictions: Family::default(),
            memory_budget_bytes: Gauge::default(),
            memory_used_bytes: Gauge::default(),
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
        registry.register(
            "batch_size",
            "Requests per batch sent to a worker",
            m.batch_size.clone(),
        );
        registry.register(
            "batch_items",
            "Requests sent to workers in batches",
            m.batch_items.clone(),
        );
        registry.register(
            "batch_wait_seconds",
            "From a batch's oldest request's arrival to the batch going to a worker",
            m.batch_wait.clone(),
        );
        registry.register(
            "batch_bisections",
            "Batches split in halves after their worker died or passed batch_timeout",
            m.bisections.clone(),
        );
        registry.register(
            "streams",
            "Streamed answers by how they ended (done, failed, cancelled)",
            m.streams.clone(),
        );
        registry.register(
            "fork_warnings",
            "Forks of worker processes that had several OS threads",
            m.fork_warnings.clone(),
        );
        registry.register(
            "worker_gpu_memory_bytes",
            "GPU memory held by a worker's processes (NVML)",
            m.worker_gpu_memory.clone(),
        );
        registry.register(
            "gpu_driver_available",
            "1 when NVML answers, 0 without an NVIDIA driver",
            m.gpu_driver.clone(),
        );
        registry.register(
            "gpu_memory_used_bytes",
            "GPU memory in use per device",
            m.gpu_memory_used.clone(),
        );
        registry.register(
            "gpu_memory_total_bytes",
            "GPU memory per device",
            m.gpu_memory_total.clone(),
        );
        registry.register(
            "gpu_utilization_ratio",
            "How busy each GPU was over the driver's last sample period, 0 to 1 (NVML)",
            m.gpu_utilization.clone(),
        );
        m.register_jobs(&mut registry);
        m.register_scaling(&mut registry);
        Metrics { registry, ..m }
    }

    /// Models on demand: loads, cold starts, scaling, evictions, the budget.
    fn register_scaling(&self, registry: &mut Registry) {
        registry.register(
            "service_loaded",
            "1 while the service has a worker loaded, 0 while it is unloaded",
            self.service_loaded.clone(),
        );
        registry.register(
            "cold_starts",
            "Workers started because a request or job found the service unloaded",
            self.cold_starts.clone(),
        );
        registry.register(
            "cold_start_seconds",
            "A cold start's time from spawn to READY",
            self.cold_start_seconds.clone(),
        );
        registry.register(
            "scale_events",
            "Workers started (up) or let go (down) by scaling, by reason",
            self.scale_events.clone(),
        );
        registry.register(
            "evictions",
            "Idle workers stopped to make room under instance.memory_budget",
            self.evictions.clone(),
        );
        registry.register(
            "memory_budget_bytes",
            "instance.memory_budget (0: none)",
            self.memory_budget_bytes.clone(),
        );
        registry.register(
            "memory_used_bytes",
            "Resident memory of every worker's processes, as the memory budget counts it",
            self.memory_used_bytes.clone(),
        );
    }

    /// The job store's figures: jobs by state, its size and limit, retention.
    fn register_jobs(&self, registry: &mut Registry) {
        registry.register(
            "jobs",
            "Durable jobs by service and state",
            self.jobs.clone(),
        );
        registry.register(
            "jobs_store_bytes",
            "The job store's size on disk (SQLite file and WAL, or PostgreSQL table)",
            self.jobs_store_bytes.clone(),
        );
        registry.register(
            "jobs_store_max_bytes",
            "instance.job_store_max_size: past it, enqueues are refused with 507",
            self.jobs_store_max_bytes.clone(),
        );
        registry.register(
            "jobs_waiting",
            "Clients waiting for a job to finish (GET /v1/jobs/{id}?wait=), read when /metrics is",
            self.jobs_waiting.clone(),
        );
        registry.register(
        "jobs_store_used_bytes",
        "The space the jobs take (SQLite pages in use, PostgreSQL table), sampled each second: what job_store_max_size bounds",
        self.jobs_store_used_bytes.clone(),
    );
        registry.register(
            "jobs_oldest_finished_timestamp_seconds",
            "When the service's oldest kept finished job finished",
            self.jobs_oldest_finished.clone(),
        );
        registry.register(
            "jobs_pruned",
            "Finished jobs deleted by job_retention",
            self.jobs_pruned.clone(),
        );
        registry.register(
            "jobs_last_prune_timestamp_seconds",
            "When the service's last prune round ended",
            self.jobs_last_prune.clone(),
        );
    }

    pub fn method(service: &str, method: &str) -> MethodLabels {
        MethodLabels {
            service: service.to_string(),
            method: method.to_string(),
        }
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
