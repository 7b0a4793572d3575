//! The supervisor: starts one coordinator per service (which starts one actor per
//! worker), and answers for the services as a whole — their status, whether they
//! are ready, reloading and stopping them all.
//!
//! It holds handles, not state: each worker's state belongs to its actor and is
//! read here through `watch` receivers.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::coordinator::{self, Order, Plan, ReloadError, ServiceHandle};
use super::dispatch::Dispatcher;
use super::metrics::Metrics;
use super::scaling::budget::{Budget, Member};
use super::worker::{Deps, Launcher, OsLauncher, StartupEvent};
use super::{env, logsink::LogSink, ports, process_groups::Groups, spawner::Spawner};
use crate::config::{Config, Kind, PortSpec};
use crate::gpu::GpuProbe;
use crate::status::{MemoryStatus, Phase, ScalingStatus, ServiceState, ServiceStatus};

pub struct Supervisor {
    pub services: Vec<ServiceHandle>,
    pub metrics: Arc<Metrics>,
    /// The machine's GPUs (NVML, or what says there is none).
    pub gpu: Arc<dyn GpuProbe>,
    /// `instance.memory_budget`, when set.
    pub budget: Option<Arc<Budget>>,
}

/// A service could not even be launched (its fixed port is taken, say).
#[derive(Debug, thiserror::Error)]
#[error("service {service}: {message}")]
pub struct LaunchError {
    pub service: String,
    pub message: String,
}

impl Supervisor {
    /// Resolves ports and starts every service. Startup progress and the verdict of
    /// each worker arrive on the returned channel.
    pub fn launch(
        config: &Config,
        spawner: Spawner,
        groups: Groups,
        logs_dir: &std::path::Path,
        metrics: Arc<Metrics>,
        gpu: Arc<dyn GpuProbe>,
    ) -> Result<(Supervisor, mpsc::UnboundedReceiver<StartupEvent>), LaunchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let launcher: Arc<dyn Launcher> = Arc::new(OsLauncher {
            spawner: spawner.clone(),
            groups,
        });
        let inherited: BTreeMap<String, String> = std::env::vars().collect();
        let cores = paddock_sys::available_cores();
        let total = config.total_workers();
        // `devices = "auto"`: every GPU the driver reports now (none without one).
        let discovered: Vec<u32> = match gpu.devices() {
            Ok(d) => d.iter().map(|d| d.index).collect(),
            Err(why) => {
                if config
                    .services
                    .iter()
                    .any(|s| s.gpu.devices == crate::config::gpu::Devices::Auto)
                {
                    tracing::warn!(
                        "devices = \"auto\": {why}; workers run without a GPU assignment"
                    );
                }
                vec![]
            }
        };
        let amd = paddock_sys::gpu::amd_present();
        // Resolve every port before starting anything, so a taken port fails the
        // start before any process exists.
        let mut port_plans = vec![];
        for s in &config.services {
            let mut ports_of = vec![];
            for _ in 0..s.workers {
                let port = match s.port {
                    None => None,
                    Some(PortSpec::Fixed(p)) => {
                        if let Some(who) = ports::holder(p) {
                            return Err(LaunchError {
                                service: s.name.to_string(),
                                message: format!(
                                    "port {p} is already in use by {who}; paddock never kills a process it did not start: stop it or choose another port"
                                ),
                            });
                        }
                        Some(p)
                    }
                    Some(PortSpec::Auto) => Some(ports::pick_free().map_err(|e| LaunchError {
                        service: s.name.to_string(),
                        message: format!("could not find a free port: {e}"),
                    })?),
                };
                ports_of.push(port);
            }
            port_plans.push(ports_of);
        }
        let budget = (config.instance.memory_budget > 0)
            .then(|| Budget::new(config.instance.memory_budget, metrics.clone()));
        metrics
            .memory_budget_bytes
            .set(config.instance.memory_budget as i64);
        let shared = coordinator::Shared {
            budget: budget.clone(),
            proofs: Arc::new(tokio::sync::Semaphore::new(1)),
            departures: Arc::new(tokio::sync::Notify::new()),
        };
        let mut services = vec![];
        for (s, ports_of) in config.services.iter().zip(port_plans) {
            // listen_fd: paddock binds each worker's socket now and keeps it for the
            // daemon's life; every generation inherits it as descriptor 3.
            let mut listeners = vec![];
            for port in &ports_of {
                listeners.push(match (s.listen_fd, port) {
                    (true, Some(p)) => {
                        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *p));
                        let l = super::ports::bind(addr)
                            .and_then(|l| l.into_std())
                            .and_then(|l| l.set_nonblocking(false).map(|()| l))
                            .map_err(|e| LaunchError {
                                service: s.name.to_string(),
                                message: format!("cannot listen on {addr} for listen_fd: {e}"),
                            })?;
                        Some(Arc::new(l))
                    }
                    _ => None,
                });
            }
            let service = Arc::new(s.clone());
            let logs = LogSink::start(
                s.name.as_str(),
                logs_dir.to_path_buf(),
                config.instance.log_max_bytes,
                config.instance.log_max_files,
            );
            let dispatcher = (s.kind == Kind::Worker).then(|| {
                Dispatcher::start_with(
                    s.name.as_str(),
                    s.max_queue,
                    s.queue_timeout,
                    s.elastic().then_some(s.startup_timeout),
                    shared.departures.clone(),
                    metrics.clone(),
                )
            });
            let deps = Deps {
                launcher: launcher.clone(),
                spawner: spawner.clone(),
                logs,
                startup: tx.clone(),
                metrics: metrics.clone(),
                dispatcher,
                coordinator: mpsc::unbounded_channel().0,
                gpu: gpu.clone(),
            };
            let placed = s.gpu.assign(&discovered, s.workers);
            let plans = ports_of
                .iter()
                .enumerate()
                .map(|(i, &port)| Plan {
                    index: i as u32,
                    port,
                    argv: env::expand_argv(&s.command, i as u32, port),
                    listener: listeners[i].clone(),
                    cwd: env::expand_path(&s.cwd, i as u32, port),
                    env_set: env::on_device(
                        env::worker_env(s, i as u32, total, cores, port, &inherited),
                        placed[i],
                        amd,
                    ),
                })
                .collect();
            let handle = coordinator::start(service, plans, deps, shared.clone());
            if let Some(b) = &budget {
                b.register(Member {
                    service: handle.config.clone(),
                    dispatcher: handle.dispatcher.clone(),
                    workers: handle.workers.clone(),
                    load: handle.load.clone(),
                });
            }
            services.push(handle);
        }
        if let Some(b) = &budget {
            tokio::spawn(b.clone().sample());
        }
        Ok((
            Supervisor {
                services,
                metrics,
                gpu,
                budget,
            },
            rx,
        ))
    }

    pub fn worker_count(&self) -> usize {
        self.services.iter().map(|s| s.initial_workers).sum()
    }

    pub fn service(&self, name: &str) -> Option<&ServiceHandle> {
        self.services
            .iter()
            .find(|s| s.config.name.as_str() == name)
    }

    /// Each service's status, from its workers' latest published states.
    pub fn status(&self) -> Vec<ServiceStatus> {
        // One NVML read for every worker (an error without a driver).
        let gpu_memory = self.gpu.process_memory();
        // One reading of the process table for every worker's tree.
        let table = paddock_sys::procs::ProcessTable::read();
        self.services
            .iter()
            .map(|s| {
                let workers: Vec<_> = s
                    .workers
                    .borrow()
                    .iter()
                    .map(|w| {
                        let mut w = w.borrow().clone();
                        let tree = w.pid.map(|pid| table.tree_of_group(pid));
                        w.rss_bytes = tree.as_ref().map(|t| {
                            t.iter()
                                .filter_map(|&p| paddock_sys::procs::rss_bytes(p))
                                .sum()
                        });
                        w.gpu_memory_bytes = match (&gpu_memory, &tree) {
                            (Ok(per_pid), Some(t)) => Some(crate::gpu::memory_of(per_pid, t)),
                            _ => None,
                        };
                        w
                    })
                    .collect();
                let scaling = s
                    .dispatcher
                    .as_ref()
                    .map(|d| scaling_status(s, d, &workers));
                // Only a service that may unload is "unloaded" with no worker: a
                // fixed one whose workers all stopped is stopped.
                let unloaded = (s.config.elastic() && scaling.as_ref().is_some_and(|x| !x.loaded))
                    .then(|| match s.load.lock().unloaded.clone() {
                        Some((since, why)) => format!("unloaded since {since}: {why}"),
                        None => "no worker loaded yet".into(),
                    });
                let (state, reason) = service_state(&workers, unloaded);
                ServiceStatus {
                    name: s.config.name.to_string(),
                    kind: s.config.kind.as_str().to_string(),
                    state,
                    reason,
                    port: s.port,
                    workers,
                    batching: s
                        .dispatcher
                        .as_ref()
                        .map(|d| d.batch_stats())
                        .unwrap_or_default(),
                    schedules: crate::schedules::shown(&s.config.schedules),
                    scaling,
                }
            })
            .collect()
    }

    /// The memory budget and its use (one reading of the process table).
    pub fn memory(&self) -> Option<MemoryStatus> {
        let u = self.budget.as_ref()?.usage();
        self.metrics.memory_used_bytes.set(u.used as i64);
        Some(MemoryStatus {
            budget_bytes: u.limit,
            used_bytes: u.used,
            reserved_bytes: u.reserved,
            headroom_bytes: u.headroom,
        })
    }

    /// Replaces every worker of every service, one at a time.
    pub async fn reload(&self) -> Result<Vec<String>, ReloadError> {
        let mut lines = vec![];
        for s in &self.services {
            lines.extend(Self::reload_one(s).await?);
        }
        Ok(lines)
    }

    /// Replaces every worker of service `name`, one at a time.
    pub async fn reload_service(&self, name: &str) -> Result<Vec<String>, ReloadError> {
        let s = self
            .service(name)
            .ok_or_else(|| ReloadError::NoService(name.to_string()))?;
        Self::reload_one(s).await
    }

    async fn reload_one(s: &ServiceHandle) -> Result<Vec<String>, ReloadError> {
        let stopping = || ReloadError::Stopping(s.config.name.to_string());
        let (tx, rx) = oneshot::channel();
        s.orders.send(Order::Reload(tx)).map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())?
    }

    /// Stops every worker (SIGTERM, then SIGKILL after the service's stop_timeout)
    /// and waits until all are gone. Queued requests are answered 503.
    pub async fn stop(&self) {
        for s in &self.services {
            if let Some(d) = &s.dispatcher {
                d.close();
            }
        }
        let mut waits = vec![];
        for s in &self.services {
            let (tx, rx) = oneshot::channel();
            if s.orders.send(Order::Stop(tx)).is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
    }
}

/// A service's state from its workers' and, for a service that may unload with
/// none loaded, why (`unloaded`).
fn service_state(
    workers: &[crate::status::WorkerStatus],
    unloaded: Option<String>,
) -> (ServiceState, Option<String>) {
    let serving = |w: &&crate::status::WorkerStatus| w.state.serving();
    let ready = workers.iter().filter(serving).count();
    if let Some(why) = unloaded {
        (ServiceState::Unloaded, Some(why))
    } else if ready == workers.len() {
        (ServiceState::Ready, None)
    } else if ready > 0 {
        (
            ServiceState::Degraded,
            Some(format!("{ready} of {} workers ready", workers.len())),
        )
    } else if let Some(c) = workers.iter().find(|w| w.state == Phase::CrashLooping) {
        (
            ServiceState::CrashLooping,
            c.reason.clone().map(|r| format!("worker {}: {r}", c.index)),
        )
    } else if let Some(f) = workers.iter().find(|w| w.state == Phase::Failed) {
        (
            ServiceState::Failed,
            f.reason.clone().map(|r| format!("worker {}: {r}", f.index)),
        )
    } else if workers.iter().all(|w| w.state == Phase::Stopped) {
        (ServiceState::Stopped, Some("stopped".to_string()))
    } else {
        let w = workers.iter().find(|w| w.state != Phase::Ready);
        (
            ServiceState::Starting,
            w.map(|w| match &w.reason {
                Some(r) => format!("worker {} is {}: {r}", w.index, w.state),
                None => format!("worker {} is {}", w.index, w.state),
            }),
        )
    }
}

/// A worker service's scaling, from its config, its record and its workers.
fn scaling_status(
    s: &ServiceHandle,
    d: &Dispatcher,
    workers: &[crate::status::WorkerStatus],
) -> ScalingStatus {
    let c = &s.config.scaling;
    let r = s.load.snapshot();
    let live = workers.iter().filter(|w| w.state != Phase::Stopped).count() as u32;
    let now = std::time::Instant::now();
    let wall = std::time::SystemTime::now();
    ScalingStatus {
        loaded: live > 0,
        workers: live,
        min_workers: c.min_workers,
        max_workers: s.config.workers,
        idle_timeout_secs: c.idle_timeout.map(|t| t.as_secs_f64()),
        target_queue: c.target_queue,
        scale_up_after_secs: c.scale_up_after.as_secs_f64(),
        last_used: d
            .last_used()
            .map(|t| crate::timefmt::rfc3339(wall - now.saturating_duration_since(t))),
        unloaded_since: r.unloaded.as_ref().map(|(t, _)| t.clone()),
        unloaded_reason: r.unloaded.map(|(_, w)| w),
        cold_starts: r.cold_starts,
        last_cold_start_ms: r.last_cold_start_ms,
        last_cold_start_wait_ms: r.last_cold_start_wait_ms,
        scale_ups: r.scale_ups,
        scale_downs: r.scale_downs,
        evictions: r.evictions,
        last_eviction: r.last_eviction,
        memory_peak_bytes: (r.memory_peak > 0).then_some(r.memory_peak),
        memory_estimate_bytes: (c.memory_estimate > 0).then_some(c.memory_estimate),
    }
}

#[cfg(test)]
mod tests {
    use super::service_state;
    use crate::status::{Phase, ServiceState, WorkerStatus};

    fn worker(index: u32, state: Phase) -> WorkerStatus {
        WorkerStatus {
            index,
            generation: 0,
            state,
            pid: None,
            restarts: 0,
            ready_since: None,
            last_exit: None,
            reason: None,
            env_set: Default::default(),
            env_from_config: vec![],
            forks_with_threads: 0,
            last_fork: None,
            rss_bytes: None,
            device: None,
            gpu_memory_bytes: None,
            sdk: None,
            load_ms: None,
        }
    }

    #[test]
    fn only_a_service_that_may_unload_is_unloaded_and_a_stopped_fixed_one_is_stopped() {
        let stopped = [worker(0, Phase::Stopped), worker(1, Phase::Stopped)];
        // A fixed service whose workers all stopped (the daemon stopping) is not
        // "unloaded", and so not ready for /readyz.
        let (state, _) = service_state(&stopped, None);
        assert_eq!(state, ServiceState::Stopped);
        assert!(!state.serving());
        let (state, why) = service_state(&stopped, Some("no worker loaded yet".into()));
        assert_eq!(state, ServiceState::Unloaded);
        assert_eq!(why.as_deref(), Some("no worker loaded yet"));
        assert!(state.serving());
        let half = [worker(0, Phase::Ready), worker(1, Phase::Starting)];
        assert_eq!(service_state(&half, None).0, ServiceState::Degraded);
        let (state, why) = service_state(&[worker(0, Phase::Starting)], None);
        assert_eq!(
            (state, why.as_deref()),
            (ServiceState::Starting, Some("worker 0 is starting"))
        );
    }
}
