//! The status report: what `paddock status --json` prints and `GET /status` serves.
//! One set of types, shared by the daemon (which fills them) and the CLI (which
//! renders them), so the two can never disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub kind: String,
    /// ready, degraded, starting, failed or stopped.
    pub state: String,
    /// Why the service is not ready, when it is not.
    pub reason: Option<String>,
    pub port: Option<u16>,
    pub workers: Vec<WorkerStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    pub index: u32,
    /// Increases by one each time this slot's process is replaced.
    pub generation: u64,
    /// starting, ready, backoff, stopping, stopped or failed.
    pub state: String,
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

impl ExitCause {
    pub fn summary(&self) -> String {
        self.description.clone()
    }
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
