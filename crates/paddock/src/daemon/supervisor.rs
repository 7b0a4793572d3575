//! The supervisor: starts one actor per worker slot, and answers for the services
//! as a whole — their status, whether they are ready, and stopping them all.
//!
//! It holds handles, not state: each worker's state belongs to its actor and is
//! read here through `watch` receivers.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::worker::{self, Command, Deps, StartupEvent};
use super::{env, groups::Groups, logsink::LogSink, ports, spawner::Spawner};
use crate::config::{Config, PortSpec, Service};
use crate::status::ServiceStatus;

pub struct ServiceRuntime {
    pub config: Arc<Service>,
    pub ports: Vec<Option<u16>>,
    pub workers: Vec<worker::Handle>,
}

pub struct Supervisor {
    pub services: Vec<ServiceRuntime>,
}

/// A service could not even be launched (its fixed port is taken, say).
#[derive(Debug, thiserror::Error)]
#[error("service {service}: {message}")]
pub struct LaunchError {
    pub service: String,
    pub message: String,
}

impl Supervisor {
    /// Resolves ports and starts every worker's actor. Startup progress and the
    /// verdict of each worker arrive on the returned channel.
    pub fn launch(
        config: &Config,
        spawner: Spawner,
        groups: Groups,
        logs_dir: &std::path::Path,
    ) -> Result<(Supervisor, mpsc::UnboundedReceiver<StartupEvent>), LaunchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let inherited: BTreeMap<String, String> = std::env::vars().collect();
        let cores = paddock_sys::available_cores();
        let total = config.total_workers();
        let mut services = vec![];
        // Resolve every port before starting anything, so a taken port fails the
        // start before any process exists.
        let mut plans = vec![];
        for s in &config.services {
            if s.kind == crate::config::Kind::Worker {
                return Err(LaunchError {
                    service: s.name.to_string(),
                    message: "kind = \"worker\" services are not available in this version yet; use kind = \"process\"".into(),
                });
            }
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
            plans.push(ports_of);
        }
        for (s, ports_of) in config.services.iter().zip(plans) {
            let service = Arc::new(s.clone());
            let logs = LogSink::start(
                s.name.as_str(),
                logs_dir.to_path_buf(),
                config.instance.log_max_bytes,
                config.instance.log_max_files,
            );
            let deps = Deps {
                spawner: spawner.clone(),
                groups: groups.clone(),
                logs,
                startup: tx.clone(),
            };
            let workers = ports_of
                .iter()
                .enumerate()
                .map(|(i, &port)| {
                    let index = i as u32;
                    worker::start(
                        worker::Spec {
                            service: service.clone(),
                            index,
                            port,
                            argv: env::expand_argv(&s.command, port),
                            env_set: env::worker_env(s, index, total, cores, port, &inherited),
                        },
                        deps.clone(),
                    )
                })
                .collect();
            services.push(ServiceRuntime {
                config: service,
                ports: ports_of,
                workers,
            });
        }
        Ok((Supervisor { services }, rx))
    }

    pub fn worker_count(&self) -> usize {
        self.services.iter().map(|s| s.workers.len()).sum()
    }

    /// Each service's status, from its workers' latest published states.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.services
            .iter()
            .map(|s| {
                let workers: Vec<_> = s
                    .workers
                    .iter()
                    .map(|w| w.status.borrow().clone())
                    .collect();
                let ready = workers.iter().filter(|w| w.state == "ready").count();
                let failed: Vec<_> = workers.iter().filter(|w| w.state == "failed").collect();
                let (state, reason) = if ready == workers.len() {
                    ("ready", None)
                } else if ready > 0 {
                    (
                        "degraded",
                        Some(format!("{ready} of {} workers ready", workers.len())),
                    )
                } else if let Some(f) = failed.first() {
                    (
                        "failed",
                        f.reason.clone().map(|r| format!("worker {}: {r}", f.index)),
                    )
                } else if workers.iter().all(|w| w.state == "stopped") {
                    ("stopped", Some("stopped".to_string()))
                } else {
                    let w = workers.iter().find(|w| w.state != "ready");
                    (
                        "starting",
                        w.map(|w| match &w.reason {
                            Some(r) => format!("worker {} is {}: {r}", w.index, w.state),
                            None => format!("worker {} is {}", w.index, w.state),
                        }),
                    )
                };
                ServiceStatus {
                    name: s.config.name.to_string(),
                    kind: format!("{:?}", s.config.kind).to_lowercase(),
                    state: state.into(),
                    reason,
                    port: s.ports.first().copied().flatten(),
                    workers,
                }
            })
            .collect()
    }

    /// Stops every worker (SIGTERM, then SIGKILL after the service's stop_timeout)
    /// and waits until all are gone.
    pub async fn stop(&self) {
        for s in &self.services {
            for w in &s.workers {
                let _ = w.commands.send(Command::Stop);
            }
        }
        for s in &self.services {
            for w in &s.workers {
                let mut st = w.status.clone();
                // Err means the actor ended, which it does only once stopped.
                let _ = st.wait_for(|x| x.state == "stopped").await;
            }
        }
    }
}
