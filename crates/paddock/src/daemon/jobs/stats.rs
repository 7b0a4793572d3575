//! What `paddock jobs stats` and `/metrics` show about the job store: jobs by
//! service and state, the store's size, each service's oldest finished job and its
//! last prune.
//!
//! Invariants:
//! - the counts and the oldest finished job come from the store in one read (one
//!   group of the store's loop), so they describe one moment;
//! - the last prune is what the service's prune task published (a `watch`), never
//!   a guess: `None` until a prune ran.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{JobError, JobState, Store, ms_to_rfc3339};
use crate::daemon::metrics::{Metrics, StateLabels};

/// What the store itself knows, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// Jobs per (service, state); absent pairs are zero.
    pub counts: Vec<(String, JobState, u64)>,
    /// Per service, when its oldest finished job finished (milliseconds).
    pub oldest_finished: Vec<(String, i64)>,
    /// The store's size on disk: SQLite's file and its WAL, PostgreSQL's table
    /// with its indexes and TOAST.
    pub bytes: u64,
}

/// One prune round of one service, as its prune task publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    /// When the round ended (milliseconds).
    pub at_ms: i64,
    /// Finished jobs it deleted.
    pub removed: u64,
    /// How long the round took, compaction included.
    pub took_ms: u64,
}

/// Where each service's prune task publishes its last round.
pub type PruneWatch = watch::Receiver<Option<PruneReport>>;

/// `paddock jobs stats --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobStats {
    /// `sqlite` or `postgres`.
    pub store: String,
    /// The SQLite file, or the PostgreSQL server and database (no password).
    pub location: String,
    pub bytes: u64,
    /// The space the jobs take, as last sampled: what `max_bytes` bounds.
    pub used_bytes: Option<u64>,
    /// `instance.job_store_max_size`: past it, enqueues are refused (507).
    pub max_bytes: u64,
    pub services: Vec<ServiceJobStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceJobStats {
    pub service: String,
    /// Every state, zeros included.
    pub counts: BTreeMap<String, u64>,
    /// When the oldest finished job still kept finished.
    pub oldest_finished: Option<String>,
    #[serde(skip)]
    pub oldest_finished_ms: Option<i64>,
    /// `job_retention` ("forever" when kept).
    pub retention: String,
    pub last_prune: Option<PruneView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PruneView {
    pub at: String,
    #[serde(skip)]
    pub at_ms: i64,
    pub removed: u64,
    pub took_ms: u64,
}

impl JobStats {
    /// Sets the job gauges from a fresh read of the store.
    pub fn record(&self, m: &Metrics) {
        let stats = self;
        m.jobs_store_bytes.set(stats.bytes as i64);
        m.jobs_store_max_bytes.set(stats.max_bytes as i64);
        if let Some(used) = stats.used_bytes {
            m.jobs_store_used_bytes.set(used as i64);
        }
        for s in &stats.services {
            for (state, n) in &s.counts {
                m.jobs
                    .get_or_create(&StateLabels {
                        service: s.service.clone(),
                        state: state.clone(),
                    })
                    .set(*n as i64);
            }
            let labels = Metrics::service(&s.service);
            // 0 when no finished job is kept.
            m.jobs_oldest_finished
                .get_or_create(&labels)
                .set(s.oldest_finished_ms.unwrap_or(0) / 1000);
            if let Some(p) = &s.last_prune {
                m.jobs_last_prune.get_or_create(&labels).set(p.at_ms / 1000);
            }
        }
    }
}

impl Store {
    pub async fn stats(&self) -> Result<StoreStats, JobError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(super::Cmd::Stats(tx))?;
        rx.await.map_err(|_| {
            JobError::Store(super::StoreError::Unreachable(
                "the job store is closed".into(),
            ))
        })?
    }
}

/// The services' figures, in the order given (`(name, retention)`), from the
/// store's read and the prune tasks' reports.
pub fn assemble(
    store: (&str, &str),
    services: &[(String, Option<std::time::Duration>)],
    read: StoreStats,
    pruned: &HashMap<String, PruneWatch>,
) -> JobStats {
    let services = services
        .iter()
        .map(|(name, retention)| {
            let mut counts: BTreeMap<String, u64> = JobState::ALL
                .iter()
                .map(|s| (s.as_str().to_string(), 0))
                .collect();
            for (svc, state, n) in &read.counts {
                if svc == name {
                    counts.insert(state.as_str().to_string(), *n);
                }
            }
            let oldest = read
                .oldest_finished
                .iter()
                .find(|(s, _)| s == name)
                .map(|(_, ms)| *ms);
            let last = pruned.get(name).and_then(|w| *w.borrow());
            ServiceJobStats {
                service: name.clone(),
                counts,
                oldest_finished: oldest.map(ms_to_rfc3339),
                oldest_finished_ms: oldest,
                retention: retention
                    .map(crate::timefmt::config_duration)
                    .unwrap_or_else(|| "forever".into()),
                last_prune: last.map(|p| PruneView {
                    at: ms_to_rfc3339(p.at_ms),
                    at_ms: p.at_ms,
                    removed: p.removed,
                    took_ms: p.took_ms,
                }),
            }
        })
        .collect();
    JobStats {
        store: store.0.to_string(),
        location: store.1.to_string(),
        bytes: read.bytes,
        used_bytes: None,
        max_bytes: 0,
        services,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_is_counted_and_other_services_are_not() {
        let read = StoreStats {
            counts: vec![
                ("a".into(), JobState::Done, 3),
                ("b".into(), JobState::Queued, 7),
            ],
            oldest_finished: vec![("a".into(), 0)],
            bytes: 4096,
        };
        let (tx, rx) = watch::channel(Some(PruneReport {
            at_ms: 1000,
            removed: 12,
            took_ms: 5,
        }));
        let pruned = HashMap::from([("a".to_string(), rx)]);
        let s = assemble(
            ("sqlite", "/x/jobs.db"),
            &[
                ("a".into(), Some(std::time::Duration::from_secs(2))),
                ("b".into(), None),
            ],
            read,
            &pruned,
        );
        drop(tx);
        let a = &s.services[0];
        assert_eq!(a.counts["done"], 3);
        assert_eq!(a.counts["queued"], 0);
        assert_eq!(a.counts.len(), JobState::ALL.len());
        assert_eq!(
            a.oldest_finished.as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
        assert_eq!(a.last_prune.as_ref().unwrap().removed, 12);
        let b = &s.services[1];
        assert_eq!((b.counts["queued"], b.counts["done"]), (7, 0));
        assert_eq!(b.retention, "forever");
        assert!(b.last_prune.is_none() && b.oldest_finished.is_none());
    }
}
