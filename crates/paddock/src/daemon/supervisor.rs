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
use super::worker::{Deps, Launcher, OsLauncher, StartupEvent};
use super::{env, logsink::LogSink, ports, process_groups::Groups, spawner::Spawner};
use crate::config::{Config, Kind, PortSpec};
use crate::gpu::GpuProbe;
use crate::status::{Phase, ServiceState, ServiceStatus};

pub struct Supervisor {
    pub services: Vec<ServiceHandle>,
    pub metrics: Arc<Metrics>,
    /// The machine's GPUs (NVML, or what says there is none).
    pub gpu: Arc<dyn GpuProbe>,
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
                Dispatcher::start(
                    s.name.as_str(),
                    s.max_queue,
                    s.queue_timeout,
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
            services.push(coordinator::start(service, plans, deps));
        }
        Ok((
            Supervisor {
                services,
                metrics,
                gpu,
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
        self.services
            .iter()
            .map(|s| {
                let workers: Vec<_> = s
                    .workers
                    .borrow()
                    .iter()
                    .map(|w| {
                        let mut w = w.borrow().clone();
                        let tree = w.pid.map(paddock_sys::procs::tree_of_group);
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
                let serving = |w: &&crate::status::WorkerStatus| w.state.serving();
                let ready = workers.iter().filter(serving).count();
                let failed: Vec<_> = workers
                    .iter()
                    .filter(|w| w.state == Phase::Failed)
                    .collect();
                let (state, reason) = if ready == workers.len() {
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
                } else if let Some(f) = failed.first() {
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
                };
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
                }
            })
            .collect()
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
