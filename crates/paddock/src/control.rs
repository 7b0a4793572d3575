//! The control-socket protocol between the CLI and its daemon: one JSON request
//! line, one JSON reply line.

use serde::{Deserialize, Serialize};

use crate::status::Status;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Status,
    Stop,
    Reload,
    /// Inspect or steer durable jobs.
    Jobs(JobsRequest),
}

/// What `paddock jobs …` asks of the daemon.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum JobsRequest {
    List {
        state: Option<String>,
        service: Option<String>,
        limit: Option<u32>,
        after: Option<i64>,
    },
    Show {
        id: String,
    },
    Cancel {
        id: String,
    },
    Retry {
        id: String,
    },
    /// Counts by state, the store's size, oldest finished job, last prune.
    Stats,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub enum Reply {
    Status { status: Box<Status> },
    Stopping,
    Reloaded { replaced: Vec<String> },
    Jobs { value: serde_json::Value },
    Error { error: String },
}

/// The verdict and progress lines a daemon writes to the `start` command's pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum StartEvent {
    Progress {
        service: String,
        message: String,
    },
    Verdict {
        code: i32,
        message: String,
        /// Details to show under the message (a worker's last log lines).
        detail: Option<String>,
    },
}
