//! One handler per control request: each takes the daemon's shared state and the
//! request's own fields, and returns the reply.

use crate::control::{JobsRequest, Reply};
use crate::daemon::handles::SharedRef;
use crate::daemon::jobs::{JobError, ListQuery};

/// `paddock status`.
pub fn status(shared: &SharedRef) -> Reply {
    Reply::Status {
        status: Box::new(shared.status()),
    }
}

/// `paddock stop`: the stop begins; the CLI then waits for the lock's release.
pub fn stop(shared: &SharedRef) -> Reply {
    tracing::info!("stop requested over the control socket");
    shared.request_stop();
    Reply::Stopping
}

/// `paddock reload`: every worker replaced, one at a time.
pub async fn reload(shared: &SharedRef) -> Reply {
    match shared.supervisor.reload().await {
        Ok(replaced) => Reply::Reloaded { replaced },
        Err(e) => Reply::Error {
            error: e.to_string(),
        },
    }
}

/// `paddock jobs list|show|cancel|retry|stats`.
pub async fn jobs(shared: &SharedRef, req: JobsRequest) -> Reply {
    let Some(j) = &shared.jobs else {
        return Reply::Error {
            error: "this instance has no worker services, so no jobs".into(),
        };
    };
    let r: Result<serde_json::Value, JobError> = match req {
        JobsRequest::List {
            state,
            service,
            limit,
            after,
        } => j
            .store
            .list(ListQuery {
                state,
                service,
                limit,
                after,
            })
            .await
            .map(|(jobs, next)| serde_json::json!({"jobs": jobs, "next": next})),
        JobsRequest::Show { id } => j.store.get(id).await.map(|v| serde_json::json!(v)),
        JobsRequest::Cancel { id } => j.cancel(id).await.map(|v| serde_json::json!(v)),
        JobsRequest::Retry { id } => j.retry(id).await.map(|v| serde_json::json!(v)),
        JobsRequest::Stats => j.stats(&shared.config).await.map(|v| serde_json::json!(v)),
    };
    match r {
        Ok(value) => Reply::Jobs { value },
        Err(e) => Reply::Error {
            error: e.to_string(),
        },
    }
}
