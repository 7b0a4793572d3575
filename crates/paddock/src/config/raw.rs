//! The config file as TOML says it, before defaults and validation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::model::{Health, Kind, ReloadStrategy};
use super::values::{Argv, Bytes, Dur, Name, PortSpec};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstance {
    pub(super) name: Option<Name>,
    pub(super) listen: Option<String>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) auth_token: Option<String>,
    pub(super) log_max_size: Option<Bytes>,
    pub(super) log_max_files: Option<u32>,
    pub(super) store: Option<String>,
    pub(super) lease_timeout: Option<Dur>,
    pub(super) job_store_max_size: Option<Bytes>,
    pub(super) log_format: Option<String>,
    pub(super) max_connections: Option<u64>,
    pub(super) expose_errors: Option<bool>,
    pub(super) header_timeout: Option<Dur>,
    pub(super) body_timeout: Option<Dur>,
    pub(super) memory_budget: Option<Bytes>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    #[serde(default = "default_kind")]
    pub(super) kind: Kind,
    pub(super) command: Argv,
    pub(super) workers: Option<u32>,
    pub(super) min_workers: Option<u32>,
    pub(super) max_workers: Option<u32>,
    pub(super) idle_timeout: Option<Dur>,
    pub(super) target_queue: Option<f64>,
    pub(super) scale_up_after: Option<Dur>,
    pub(super) memory_estimate: Option<Bytes>,
    pub(super) cwd: Option<PathBuf>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    pub(super) startup_timeout: Option<Dur>,
    pub(super) request_timeout: Option<Dur>,
    pub(super) stop_timeout: Option<Dur>,
    pub(super) port: Option<PortSpec>,
    pub(super) health: Option<Health>,
    pub(super) health_interval: Option<Dur>,
    pub(super) health_timeout: Option<Dur>,
    pub(super) health_failures: Option<u32>,
    pub(super) backoff_initial: Option<Dur>,
    pub(super) backoff_max: Option<Dur>,
    pub(super) crash_loop_failures: Option<u32>,
    pub(super) crash_loop_window: Option<Dur>,
    pub(super) stable_after: Option<Dur>,
    pub(super) reload: Option<ReloadStrategy>,
    pub(super) start_stagger: Option<Dur>,
    #[serde(default)]
    pub(super) listen_fd: bool,
    pub(super) max_queue: Option<u32>,
    pub(super) queue_timeout: Option<Dur>,
    pub(super) retry_on_crash: Option<u32>,
    pub(super) poison_limit: Option<u32>,
    pub(super) max_requests: Option<u64>,
    pub(super) max_rss: Option<Bytes>,
    pub(super) max_frame: Option<Bytes>,
    pub(super) max_attempts: Option<u32>,
    pub(super) jobs_share: Option<f64>,
    pub(super) job_backoff: Option<Dur>,
    pub(super) job_retention: Option<String>,
    pub(super) job_max_body: Option<Bytes>,
    pub(super) job_max_result: Option<Bytes>,
    pub(super) stream_idle_timeout: Option<Dur>,
    pub(super) stream_write_timeout: Option<Dur>,
    pub(super) cancel_grace: Option<Dur>,
    /// Per batched method: overrides of the limits its workers announce.
    #[serde(default)]
    pub(super) batch: BTreeMap<String, RawBatch>,
    /// `[[services.NAME.schedule]]`: periodic jobs.
    #[serde(default)]
    pub(super) schedule: Vec<super::schedule::RawSchedule>,
    pub(super) devices: Option<super::gpu::RawDevices>,
    pub(super) workers_per_device: Option<u32>,
    pub(super) max_gpu_memory: Option<Bytes>,
}

impl RawService {
    /// [`super::gpu::parse`] of this table's GPU keys (`devices` is taken out).
    pub(super) fn gpu(&mut self) -> Result<(super::gpu::Gpu, Option<u64>), (&'static str, String)> {
        super::gpu::parse(
            self.devices.take(),
            self.workers_per_device,
            self.max_gpu_memory,
            self.workers,
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBatch {
    pub(super) max_size: Option<u32>,
    pub(super) max_wait: Option<Dur>,
    pub(super) batch_timeout: Option<Dur>,
}

pub(super) fn default_kind() -> Kind {
    Kind::Worker
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) instance: RawInstance,
    #[serde(default)]
    pub(super) services: BTreeMap<Name, RawService>,
}
