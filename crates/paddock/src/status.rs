//! The status report: what `paddock status --json` prints and `GET /status` serves.
//! One set of types, shared by the daemon (which fills them) and the CLI (which
//! renders them), so the two can never disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a worker is: its lifecycle state, as `status`, `/status` and the metrics
/// name it. The daemon's parts compare these, never strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Starting,
    Ready,
    Busy,
    Replacing,
    Restarting,
    Backoff,
    CrashLooping,
    Stopping,
    Stopped,
    Failed,
}

impl Phase {
    /// Every phase, in the order the metrics list them.
    pub const ALL: [Phase; 10] = [
        Phase::Starting,
        Phase::Ready,
        Phase::Busy,
        Phase::Replacing,
        Phase::Restarting,
        Phase::Backoff,
        Phase::CrashLooping,
        Phase::Stopping,
        Phase::Stopped,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Busy => "busy",
            Phase::Replacing => "replacing",
            Phase::Restarting => "restarting",
            Phase::Backoff => "backoff",
            Phase::CrashLooping => "crash-looping",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        }
    }

    /// Ready or busy: the worker serves.
    pub fn serving(self) -> bool {
        matches!(self, Phase::Ready | Phase::Busy)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service as a whole, from its workers' phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Every worker serves.
    Ready,
    /// Some workers serve.
    Degraded,
    Starting,
    /// No worker is loaded (min_workers = 0, idle): the next request loads one.
    Unloaded,
    /// No worker serves and one is crash-looping.
    CrashLooping,
    /// The initial start failed.
    Failed,
    Stopping,
    Stopped,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Ready => "ready",
            ServiceState::Degraded => "degraded",
            ServiceState::Starting => "starting",
            ServiceState::Unloaded => "unloaded",
            ServiceState::CrashLooping => "crash-looping",
            ServiceState::Failed => "failed",
            ServiceState::Stopping => "stopping",
            ServiceState::Stopped => "stopped",
        }
    }

    /// At least one worker serves, or none is loaded and the next request loads
    /// one (what `/readyz` asks of every service).
    pub fn serving(self) -> bool {
        matches!(
            self,
            ServiceState::Ready | ServiceState::Degraded | ServiceState::Unloaded
        )
    }
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub instance: InstanceStatus,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    pub pid: i32,
    pub port: u16,
    pub listen: String,
    pub version: String,
    pub started_at: String,
    pub uptime_secs: u64,
    pub state_dir: String,
    pub config: String,
    /// Every service has at least one ready worker.
    pub ready: bool,
    /// The machine's GPUs, or why none can be seen.
    #[serde(default)]
    pub gpus: crate::gpu::GpuStatus,
    /// Why the job store cannot be reached now (a shared PostgreSQL restarting, a
    /// network split): jobs are refused with 503 until it is back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_store_outage: Option<String>,
    /// `memory_budget` and what the workers hold, when the config sets a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStatus>,
}

/// The instance's memory budget and its use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemoryStatus {
    pub budget_bytes: u64,
    /// Resident memory of every worker's processes.
    pub used_bytes: u64,
    /// Reserved for workers starting, beyond what they hold yet.
    pub reserved_bytes: u64,
    /// What loaded workers reached before, beyond what they hold now: the budget
    /// keeps it for them.
    #[serde(default)]
    pub headroom_bytes: u64,
}

/// A worker service's scaling: its range, whether it is loaded, and what loading,
/// unloading and evicting it has done.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScalingStatus {
    pub loaded: bool,
    /// Workers now (starting or serving).
    pub workers: u32,
    pub min_workers: u32,
    pub max_workers: u32,
    /// Seconds (None: workers are never let go for idleness).
    pub idle_timeout_secs: Option<f64>,
    pub target_queue: f64,
    pub scale_up_after_secs: f64,
    /// When a request was last queued or handed to a worker (RFC 3339).
    pub last_used: Option<String>,
    /// Since when no worker is loaded (RFC 3339), and why.
    pub unloaded_since: Option<String>,
    pub unloaded_reason: Option<String>,
    pub cold_starts: u64,
    /// The last cold start's spawn to READY.
    pub last_cold_start_ms: Option<u64>,
    /// How long it waited before its spawn for room in the memory budget (evicted
    /// workers to exit).
    #[serde(default)]
    pub last_cold_start_wait_ms: Option<u64>,
    pub scale_ups: u64,
    pub scale_downs: u64,
    pub evictions: u64,
    /// The last eviction: when and why.
    pub last_eviction: Option<String>,
    /// The most one worker was seen to hold (what the budget expects of a start).
    pub memory_peak_bytes: Option<u64>,
    /// `memory_estimate`, when set.
    pub memory_estimate_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub kind: String,
    pub state: ServiceState,
    /// Why the service is not ready, when it is not.
    pub reason: Option<String>,
    pub port: Option<u16>,
    pub workers: Vec<WorkerStatus>,
    /// Batched methods: their limits and what was sent so far.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub batching: BTreeMap<String, BatchStatus>,
    /// Periodic jobs and their next run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleStatus>,
    /// Worker services: the worker range, loads, unloads and evictions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingStatus>,
}

/// A periodic job, as `status` and `check` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScheduleStatus {
    pub name: String,
    pub cron: String,
    pub handler: String,
    /// The next tick (RFC 3339, UTC), if the expression has one.
    pub next_run: Option<String>,
}

/// One batched method, as `status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BatchStatus {
    /// The most requests in one batch (the worker's, or the config's override).
    pub max_size: usize,
    /// Batches sent to workers so far.
    pub batches: u64,
    /// Requests sent in them.
    pub items: u64,
    /// Batches split in halves after their worker died or hung.
    pub bisections: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    pub index: u32,
    /// Increases by one each time this slot's process is replaced.
    pub generation: u64,
    pub state: Phase,
    pub pid: Option<i32>,
    pub restarts: u64,
    pub ready_since: Option<String>,
    pub last_exit: Option<ExitCause>,
    /// Why the worker is failed or in backoff.
    pub reason: Option<String>,
    /// The environment variables paddock computed for this worker (thread-pool
    /// sizes, `PADDOCK_*`, `PORT`), with their values.
    pub env_set: BTreeMap<String, String>,
    /// The names of the variables the service's `env` sets. Their values may be
    /// secrets (`HF_TOKEN`): they are never shown.
    #[serde(default)]
    pub env_from_config: Vec<String>,
    /// Times this slot's processes forked with several OS threads (the SDK's fork
    /// guard, protocol version 5).
    #[serde(default)]
    pub forks_with_threads: u64,
    /// The last such fork: its thread count and call site.
    #[serde(default)]
    pub last_fork: Option<String>,
    /// Resident memory of the worker's processes together, when it runs (read
    /// from the process table when the status is asked for).
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// The GPU paddock assigned this worker (`devices`), if any.
    #[serde(default)]
    pub device: Option<u32>,
    /// GPU memory the worker's processes hold together (NVML); None without a
    /// driver (`instance.gpus.unavailable` says why) or while it does not run.
    #[serde(default)]
    pub gpu_memory_bytes: Option<u64>,
    /// The SDK its process said it runs in HELLO (worker services; None before
    /// HELLO and for process services).
    #[serde(default)]
    pub sdk: Option<WorkerSdk>,
    /// Worker services: the current process's time from its spawn to READY.
    #[serde(default)]
    pub load_ms: Option<u64>,
}

/// A worker's SDK, from its HELLO (docs/protocol.md, "HELLO's metadata"): every
/// field but the protocol version is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerSdk {
    /// The worker protocol version it speaks.
    pub protocol: u16,
    /// Its language (`python`).
    #[serde(default)]
    pub language: Option<String>,
    /// Its version: the paddock release it comes from.
    #[serde(default)]
    pub version: Option<String>,
    /// Where it was imported from.
    #[serde(default)]
    pub path: Option<String>,
    /// The interpreter's version.
    #[serde(default)]
    pub python: Option<String>,
    /// The interpreter.
    #[serde(default)]
    pub executable: Option<String>,
}

/// How a worker process ended. An exit code and a signal are kept distinct.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitCause {
    /// The exit status, when the process exited.
    pub exit_code: Option<i32>,
    /// The signal's name ("SIGSEGV"), when a signal ended it.
    pub signal: Option<String>,
    /// paddock asked for this end (stop, restart, deadline).
    pub requested: bool,
    /// The kernel's OOM killer ended it (where that can be detected).
    pub oom_killed: bool,
    pub at: String,
    /// One line for humans: "exited with status 1", "killed by SIGSEGV".
    pub description: String,
}

/// "exited with status 1", "was killed by SIGSEGV".
pub fn describe_exit(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by {}", paddock_sys::signal::name(s)),
        _ => "ended for an unknown reason".into(),
    }
}
