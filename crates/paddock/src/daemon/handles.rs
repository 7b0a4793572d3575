//! The daemon's handles, what the gateway and the control socket read: the config,
//! the supervisor, the job store, and the way to ask the daemon to stop. Immutable
//! once built.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use super::jobs::{JobError, JobView};
use super::supervisor::Supervisor;
use crate::config::Config;
use crate::instance::Paths;
use crate::status::{InstanceStatus, Phase, ServiceState, Status};

pub struct Shared {
    pub config: Config,
    pub paths: Paths,
    pub pid: i32,
    pub started_at: SystemTime,
    pub started: Instant,
    pub supervisor: Supervisor,
    pub shutdown: watch::Sender<bool>,
    pub jobs: Option<Jobs>,
    /// Set when the job database vanished from its path while the daemon ran
    /// (its folder deleted, say): enqueues are refused with this reason.
    pub jobs_lost: watch::Sender<Option<String>>,
    /// What `/admin/*` asks for: `auth_token`, or the instance's own token.
    pub operator_token: String,
}

/// The job store, a way to wake each service's pump, and each service's last
/// prune.
pub struct Jobs {
    pub store: super::jobs::Store,
    /// `sqlite` or `postgres`, and its file or its URL without a password.
    pub kind: (&'static str, String),
    pub pumps: std::collections::HashMap<String, super::jobs::pump::Signals>,
    pub pruned: std::collections::HashMap<String, super::jobs::stats::PruneWatch>,
    /// The store's size (`jobs::size`), and its limit.
    pub size: super::jobs::size::StoreSize,
    pub max_bytes: u64,
}

impl Jobs {
    /// Cancels a queued, scheduled, claimed or running job; the pump holding it claimed drops it.
    pub async fn cancel(&self, id: String) -> Result<JobView, JobError> {
        let v = self.store.cancel(id).await?;
        if let Some(p) = self.pumps.get(&v.service) {
            p.cancelled(v.id.clone());
        }
        Ok(v)
    }

    /// Queues a dead or cancelled job again, and wakes its pump.
    pub async fn retry(&self, id: String) -> Result<JobView, JobError> {
        let v = self.store.retry(id).await?;
        if let Some(p) = self.pumps.get(&v.service) {
            p.wake();
        }
        Ok(v)
    }

    /// `paddock jobs stats` and the job gauges of `/metrics`.
    pub async fn stats(
        &self,
        config: &Config,
    ) -> Result<super::jobs::stats::JobStats, super::jobs::JobError> {
        let read = self.store.stats().await?;
        let services: Vec<_> = config
            .services
            .iter()
            .filter(|s| self.pumps.contains_key(s.name.as_str()))
            .map(|s| (s.name.to_string(), s.job_retention))
            .collect();
        let mut stats = super::jobs::stats::assemble(
            (self.kind.0, &self.kind.1),
            &services,
            read,
            &self.pruned,
        );
        stats.used_bytes = self.size.reading();
        stats.max_bytes = self.max_bytes;
        Ok(stats)
    }

    /// Why an enqueue must be refused now (the store is at its size limit), if so.
    pub fn full(&self) -> Option<(String, u64)> {
        let size = self.size.estimate();
        super::jobs::size::over(size, self.max_bytes).map(|why| (why, size.unwrap_or(0)))
    }
}

pub type SharedRef = Arc<Shared>;

impl Shared {
    pub fn status(&self) -> Status {
        let mut services = self.supervisor.status();
        // Once a stop began, every service not yet stopped is stopping (a worker
        // draining its last request is not "starting").
        if *self.shutdown.borrow() {
            for s in &mut services {
                if s.state != ServiceState::Stopped {
                    let left = s
                        .workers
                        .iter()
                        .filter(|w| w.state != Phase::Stopped)
                        .count();
                    s.state = ServiceState::Stopping;
                    s.reason = Some(format!(
                        "the instance is stopping: {left} of {} workers still running",
                        s.workers.len()
                    ));
                }
            }
        }
        let ready = services.iter().all(|s| s.state.serving());
        Status {
            instance: InstanceStatus {
                name: self.config.instance.name.to_string(),
                pid: self.pid,
                port: self.config.instance.listen.port(),
                listen: self.config.instance.listen.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at: crate::timefmt::rfc3339(self.started_at),
                uptime_secs: self.started.elapsed().as_secs(),
                state_dir: self.paths.dir.display().to_string(),
                config: self.config.path.display().to_string(),
                ready,
                gpus: crate::gpu::GpuStatus::read(self.supervisor.gpu.as_ref()),
                memory: self.supervisor.memory(),
                job_store_outage: self.jobs.as_ref().and_then(|j| j.store.outage()),
            },
            services,
        }
    }

    pub fn request_stop(&self) {
        let _ = self.shutdown.send(true);
    }
}
