//! Retention: finished jobs (done, dead, cancelled) older than the service's
//! `job_retention` are deleted, with their history and result, by one task per
//! service.
//!
//! Invariants:
//! - only finished jobs are deleted: queued and running jobs never are;
//! - deletion runs in batches of `BATCH` rows, each its own small group in the
//!   store's loop, so enqueues and claims interleave with a long prune instead of
//!   waiting behind one large write;
//! - after a prune that removed something, the store compacts (SQLite: incremental
//!   vacuum and a WAL checkpoint), so the file shrinks, not only stops growing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Store, now_ms};
use crate::config::Service;

/// Rows deleted per store command.
const BATCH: usize = 500;

pub fn start(service: Arc<Service>, store: Store, mut shutdown: watch::Receiver<bool>) {
    let Some(keep) = service.job_retention else {
        return; // "forever"
    };
    // Often enough that a job outlives its retention by at most a quarter of it.
    let every = (keep / 4).clamp(Duration::from_millis(250), Duration::from_secs(60));
    tokio::spawn(async move {
        let name = service.name.to_string();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            let before = now_ms() - keep.as_millis() as i64;
            let mut removed = 0;
            loop {
                let n = store.prune(&name, before, BATCH).await;
                removed += n;
                if n < BATCH as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if removed > 0 {
                store.compact().await;
                tracing::info!(service = %name, "pruned {removed} finished job(s) older than job_retention");
            }
        }
    });
}
