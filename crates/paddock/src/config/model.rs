//! The validated config: what the rest of paddock reads (with defaults applied).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::values::{Argv, Name, PortSpec};

/// How `paddock reload` (and a recycle) replaces a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadStrategy {
    /// Start the replacement, wait until it is ready, then retire the old worker:
    /// capacity never drops (worker services' default).
    StartFirst,
    /// Retire the old worker first, then start its replacement: for what cannot be
    /// open twice (a ChromaDB PersistentClient, a SQLite file, a GPU too small for
    /// two copies of the model). Capacity drops by one worker while it reloads.
    StopFirst,
}

impl ReloadStrategy {
    /// As the config writes it: `start-first`, `stop-first`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadStrategy::StartFirst => "start-first",
            ReloadStrategy::StopFirst => "stop-first",
        }
    }
}

/// The kind of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Speaks the paddock worker protocol.
    Worker,
    /// Any server: paddock gives it a port and proves readiness by probes.
    Process,
}

impl Kind {
    /// As written in the config: `worker` or `process`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Worker => "worker",
            Kind::Process => "process",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How readiness and liveness are proven.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// GET this path on the service's port; 2xx passes.
    Http(String),
    /// A TCP connect to the service's port passes.
    Tcp,
    /// This program exits 0.
    Exec(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    http: Option<String>,
    tcp: Option<bool>,
    exec: Option<Argv>,
}

impl<'de> Deserialize<'de> for Health {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = RawHealth::deserialize(d)?;
        match (raw.http, raw.tcp, raw.exec) {
            (Some(p), None, None) if p.starts_with('/') => Ok(Health::Http(p)),
            (Some(p), None, None) => Err(D::Error::custom(format!(
                "health http path {p:?} must start with '/'"
            ))),
            (None, Some(true), None) => Ok(Health::Tcp),
            (None, None, Some(a)) => Ok(Health::Exec(a.0)),
            _ => Err(D::Error::custom(
                "health takes exactly one of { http = \"/path\" }, { tcp = true }, { exec = [\"program\", ...] }",
            )),
        }
    }
}

/// The instance section, with defaults applied.
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: Name,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub auth_token: Option<String>,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// The daemon's own log: text lines, or one JSON object a line.
    pub log_format: LogFormat,
    /// Where durable jobs live.
    pub store: Store,
    /// PostgreSQL store: how long a claimed job stays claimed without a heartbeat.
    pub lease_timeout: Duration,
    /// Past this size of the job store, enqueues are refused (507); claims,
    /// results and pruning go on.
    pub job_store_max_bytes: u64,
    /// Gateway connections open at once, at most (more wait in the backlog).
    pub max_connections: usize,
    /// A connection must send a whole request head within this long of becoming
    /// idle (on connect and after each response), or it is closed.
    pub header_timeout: Duration,
    /// A request's body must arrive within this long (408 otherwise).
    pub body_timeout: Duration,
    /// Handler exceptions' messages and tracebacks go to HTTP clients too (a
    /// debugging aid; loopback only).
    pub expose_errors: bool,
    /// Resident memory all workers together may hold, as far as starting and
    /// evicting workers goes (0: no budget).
    pub memory_budget: u64,
}

/// How the daemon writes its own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human lines (the default).
    Text,
    /// One JSON object a line, for log shippers: time, level, target, the message
    /// and the event's fields (service, worker, pid …).
    Json,
}

/// The job store: SQLite in the instance's folder, or a shared PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Store {
    /// `<state_dir>/<name>-<port>/jobs.db` (None) or this file.
    Sqlite(Option<PathBuf>),
    /// A `postgres://` connection string.
    Postgres(String),
}

/// One service, with defaults applied.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: Name,
    pub kind: Kind,
    pub command: Vec<String>,
    /// The most workers the service runs (its slots); exactly this many unless
    /// `scaling.min_workers` is lower.
    pub workers: u32,
    /// min_workers, idle_timeout, target_queue, scale_up_after, memory_estimate.
    pub scaling: Scaling,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub startup_timeout: Duration,
    pub request_timeout: Duration,
    pub port: Option<PortSpec>,
    pub health: Option<Health>,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    /// How a worker's failures are met, and how long it is given to stop: the
    /// policy its lifecycle follows, as configured.
    pub restart: Restart,
    /// How a reload replaces each worker (process services: always stop-first).
    pub reload: ReloadStrategy,
    /// Worker N's first spawn waits N times this long (0: all at once).
    pub start_stagger: Duration,
    /// Process services: paddock binds the listening socket (127.0.0.1:port) and
    /// hands it to every generation as descriptor 3 (`LISTEN_FDS`/`LISTEN_PID`), so
    /// connections wait in its backlog across a restart or reload.
    pub listen_fd: bool,
    /// Requests waiting for a worker, at most (worker services).
    pub max_queue: usize,
    /// How long a request may wait for a worker.
    pub queue_timeout: Duration,
    /// Retries on another worker of an idempotent method after a crash.
    pub retry_on_crash: u32,
    /// A request that killed this many workers fails as a poison request.
    pub poison_limit: u32,
    /// Recycle a worker after this many requests (0: never), with up to 10 % jitter.
    pub max_requests: u64,
    /// Recycle a worker whose resident memory exceeds this (0: never).
    pub max_rss: u64,
    /// The largest protocol frame, both ways.
    pub max_frame: usize,
    /// Failed attempts after which a job is dead.
    pub max_attempts: u32,
    /// The share of workers that jobs may occupy at once (at least one worker).
    pub jobs_share: f64,
    /// The delay before a failed job's next attempt; doubles each time (max 5 min).
    pub job_backoff: Duration,
    /// Finished jobs (done, dead, cancelled) older than this are deleted; `None`
    /// keeps them forever.
    pub job_retention: Option<Duration>,
    /// The largest job body accepted (413 past it, before anything is stored).
    pub job_max_body: u64,
    /// The largest job result stored (a larger one fails the attempt).
    pub job_max_result: u64,
    /// A streamed answer: the longest the worker may be silent between chunks
    /// (while the daemon reads it).
    pub stream_idle_timeout: Duration,
    /// A streamed answer: a client that takes nothing this long is dropped (the
    /// worker is sent CANCEL).
    pub stream_write_timeout: Duration,
    /// After CANCEL, how long the worker has to end the stream before it is killed.
    pub cancel_grace: Duration,
    /// `[services.NAME.batch.METHOD]`: overrides of a batched method's limits.
    pub batch: BTreeMap<String, BatchOverride>,
    /// Periodic jobs (worker services).
    pub schedules: Vec<super::schedule::Schedule>,
    /// GPUs: devices, workers per device, max_gpu_memory.
    pub gpu: super::gpu::Gpu,
}

impl Service {
    /// The number of workers can change (min_workers < max_workers): idle ones
    /// unload, and more start under load.
    pub fn elastic(&self) -> bool {
        self.scaling.min_workers < self.workers
    }
}

/// The elastic settings of a worker service (fixed services have min = max).
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    /// Workers kept loaded whatever the load (0: the service may unload).
    pub min_workers: u32,
    /// A worker beyond `min_workers` that served nothing this long is stopped.
    pub idle_timeout: Option<Duration>,
    /// Queued requests per worker (ready or starting) above which another starts.
    pub target_queue: f64,
    /// How long the queue must stay above `target_queue` before a worker starts.
    pub scale_up_after: Duration,
    /// What one worker is expected to hold (resident memory), 0 when unknown.
    pub memory_estimate: u64,
}

/// What the config says of one batched method; unset fields keep what the worker
/// announced (`max_size`, `max_wait`) or the default (`batch_timeout`: the
/// service's `request_timeout`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOverride {
    pub max_size: Option<usize>,
    pub max_wait: Option<Duration>,
    pub batch_timeout: Option<Duration>,
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, absolute.
    pub path: PathBuf,
    pub instance: Instance,
    pub services: Vec<Service>,
}

impl Config {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name.as_str() == name)
    }

    /// The longest a start may take: the longest startup_timeout, plus one
    /// startup_timeout per service proven at start (min_workers = 0), as those
    /// proofs run one after another.
    pub fn longest_start(&self) -> Duration {
        let longest = self
            .services
            .iter()
            .map(|s| s.startup_timeout)
            .max()
            .unwrap_or_default();
        let proofs: Duration = self
            .services
            .iter()
            .filter(|s| s.scaling.min_workers == 0)
            .map(|s| s.startup_timeout)
            .sum();
        longest + proofs
    }

    /// The most worker processes across services.
    pub fn total_workers(&self) -> u32 {
        self.services.iter().map(|s| s.workers).sum()
    }
}

/// How a worker's failures are met, and how long a stopping one is given: one type
/// for the config and the lifecycle (`daemon::lifecycle::Policy` is this).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Restart {
    /// Failed health probes in a row that restart a ready worker.
    pub health_failures: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub crash_loop_failures: u32,
    pub crash_loop_window: Duration,
    /// Ready this long, a worker's failures are forgotten (its next one restarts it
    /// at once).
    pub stable_after: Duration,
    /// From SIGTERM to SIGKILL.
    pub stop_timeout: Duration,
}

impl Restart {
    /// The wait before the `n`th try after a failure (n ≥ 1): `backoff_initial`
    /// doubled each time, at most `backoff_max`, times `jitter` (1.0: none).
    pub fn backoff(&self, n: u32, jitter: f64) -> Duration {
        let base =
            self.backoff_initial.as_secs_f64() * 2f64.powi(n.saturating_sub(1).min(30) as i32);
        Duration::from_secs_f64(base.min(self.backoff_max.as_secs_f64()) * jitter)
    }
}
