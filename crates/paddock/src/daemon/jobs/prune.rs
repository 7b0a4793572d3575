//! Retention: finished jobs (done, dead, cancelled) older than the service's
//! `job_retention` are deleted, with their history and result, by one task per
//! service.
//!
//! Invariants:
//! - only finished jobs are deleted: queued and running jobs never are;
//! - deletion runs in batches of `BATCH` rows, each its own small group in the
//!   store's loop, and after each batch (and each compaction step) the task pauses
//!   as long as the batch took: the store spends at most half its time pruning, and
//!   an enqueue or a claim waits behind one batch at most, never a whole prune;
//! - after a prune that removed something, the store compacts (SQLite: incremental
//!   vacuum in steps, then a WAL checkpoint), so the file shrinks, not only stops
//!   growing;
//! - each round is published (`PruneReport`) for `paddock jobs stats` and counted
//!   in `/metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::stats::{PruneReport, PruneWatch};
use super::{Store, now_ms};
use crate::config::Service;
use crate::daemon::metrics::Metrics;

/// Rows deleted per store command.
const BATCH: usize = 500;

/// The longest pause between two batches.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Starts the service's prune task (none for "forever"); its rounds are published
/// on the returned watch.
pub fn start(
    service: Arc<Service>,
    store: Store,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> PruneWatch {
    let (report, watch) = watch::channel(None);
    let Some(keep) = service.job_retention else {
        return watch; // "forever"
    };
    // Often enough that a job outlives its retention by at most a quarter of it.
    let every = (keep / 4).clamp(Duration::from_millis(250), Duration::from_secs(60));
    tokio::spawn(async move {
        let name = service.name.to_string();
        let pruned = metrics
            .jobs_pruned
            .get_or_create(&Metrics::service(&name))
            .clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            let began = Instant::now();
            let before = now_ms() - keep.as_millis() as i64;
            let mut removed = 0;
            loop {
                let t = Instant::now();
                let n = store.prune(&name, before, BATCH).await;
                removed += n;
                pruned.inc_by(n);
                if n < BATCH as u64 || *shutdown.borrow() {
                    break;
                }
                tokio::time::sleep(t.elapsed().min(MAX_PAUSE)).await;
            }
            if removed > 0 {
                loop {
                    let t = Instant::now();
                    if store.compact_step().await == 0 || *shutdown.borrow() {
                        break;
                    }
                    tokio::time::sleep(t.elapsed().min(MAX_PAUSE)).await;
                }
                tracing::info!(service = %name, "pruned {removed} finished job(s) older than job_retention");
            }
            report.send_replace(Some(PruneReport {
                at_ms: now_ms(),
                removed,
                took_ms: began.elapsed().as_millis() as u64,
            }));
        }
    });
    watch
}
