//! The actor's outside: what the supervisor and the service coordinator hold (a
//! [`Handle`]), what they send it ([`Command`]), what it tells them ([`StartupEvent`],
//! [`Ask`]), what it needs ([`Deps`], [`Spec`]), and [`start`], which runs it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::Actor;
use super::launch::Launcher;
use crate::config::Service;
use crate::daemon::dispatch::Dispatcher;
use crate::daemon::logsink::LogSink;
use crate::daemon::messages::Command;
use crate::daemon::metrics::Metrics;
use crate::daemon::spawner::Spawner;
use crate::status::{Phase, WorkerStatus};

/// Lines of a worker's output shown with a failure.
pub const TAIL_LINES: usize = 20;

/// What a worker tells the supervisor during the initial start.
#[derive(Debug)]
pub enum StartupEvent {
    Progress {
        service: String,
        worker: u32,
        message: String,
    },
    Ready {
        service: String,
        worker: u32,
    },
    Failed {
        service: String,
        worker: u32,
        code: i32,
        message: String,
        tail: Vec<String>,
    },
}

/// What the actor asks of its service's coordinator.
#[derive(Debug)]
pub enum Ask {
    /// Replace me: max_requests, max_rss or max_gpu_memory. `room_for_two`: a
    /// replacement may start beside me (false: my GPU has no room for a second
    /// copy, so I go first — unless I am the last ready worker).
    Recycle {
        wid: u64,
        reason: String,
        room_for_two: bool,
    },
}

/// What the actor needs from the daemon.
#[derive(Clone)]
pub struct Deps {
    /// Starts the worker's processes (the spawner thread, or a fake in tests).
    pub launcher: Arc<dyn Launcher>,
    /// Runs `exec` health probes.
    pub spawner: Spawner,
    pub logs: LogSink,
    pub startup: mpsc::UnboundedSender<StartupEvent>,
    pub metrics: Arc<Metrics>,
    pub dispatcher: Option<Dispatcher>,
    pub coordinator: mpsc::UnboundedSender<Ask>,
    /// The GPUs, for max_gpu_memory.
    pub gpu: Arc<dyn crate::gpu::GpuProbe>,
}

/// Everything fixed about one worker slot.
pub struct Spec {
    pub service: Arc<Service>,
    pub index: u32,
    /// Unique among the service's actors (a slot's replacement gets a new one).
    pub wid: u64,
    pub port: Option<u16>,
    pub argv: Vec<String>,
    /// `listen_fd`: the listening socket every generation inherits as descriptor 3.
    pub listener: Option<Arc<std::net::TcpListener>>,
    /// The working directory (`cwd` with `{worker}` expanded).
    pub cwd: std::path::PathBuf,
    pub env_set: BTreeMap<String, String>,
    /// How long to wait before the first spawn (`start_stagger`).
    pub start_delay: Duration,
    /// Part of the initial start: a failure fails `paddock start`.
    pub initial: bool,
    /// Started by scaling (on demand or under load): a failure before READY is
    /// the coordinator's to report to waiting requests, with its own Retry-After.
    pub on_demand: bool,
    /// The slot's generation counter (the last generation issued), shared by the
    /// slot's successive actors: every spawn takes the next number, so no two
    /// processes of a slot ever share one (docs/protocol.md), even when a failed
    /// replacement and the worker it was to replace spawn side by side.
    pub generations: Arc<std::sync::atomic::AtomicU64>,
}

/// The supervisor's handle to a worker actor.
pub struct Handle {
    pub wid: u64,
    pub status: watch::Receiver<WorkerStatus>,
    pub commands: mpsc::UnboundedSender<Command>,
}

pub fn start(spec: Spec, deps: Deps) -> Handle {
    let (status_tx, status) = watch::channel(WorkerStatus {
        index: spec.index,
        generation: spec.generations.load(std::sync::atomic::Ordering::Acquire),
        state: Phase::Starting,
        pid: None,
        restarts: 0,
        ready_since: None,
        last_exit: None,
        reason: None,
        env_set: crate::daemon::env::computed(&spec.service, &spec.env_set),
        env_from_config: spec.service.env.keys().cloned().collect(),
        forks_with_threads: 0,
        last_fork: None,
        rss_bytes: None,
        device: crate::gpu::assigned_device(&spec.env_set),
        gpu_memory_bytes: None,
        sdk: None,
        load_ms: None,
    });
    let (commands, mut rx) = mpsc::unbounded_channel();
    let wid = spec.wid;
    let me = commands.clone();
    tokio::spawn(async move {
        // start_stagger: this worker's first spawn waits its turn; a stop meanwhile
        // ends it without a process ever existing.
        if !spec.start_delay.is_zero() {
            status_tx.send_modify(|s| {
                s.reason = Some(format!(
                    "waiting {:.1}s (start_stagger)",
                    spec.start_delay.as_secs_f64()
                ))
            });
            tokio::select! {
                _ = tokio::time::sleep(spec.start_delay) => {}
                _ = stop_asked(&mut rx) => {
                    status_tx.send_modify(|s| {
                        s.state = Phase::Stopped;
                        s.reason = None;
                    });
                    return;
                }
            }
            status_tx.send_modify(|s| s.reason = None);
        }
        Actor::new(spec, deps, status_tx, me).run(rx).await
    });
    Handle {
        wid,
        status,
        commands,
    }
}

/// Completes when a stop (or retire) is asked of an actor that has not started.
pub(super) async fn stop_asked(rx: &mut mpsc::UnboundedReceiver<Command>) {
    loop {
        match rx.recv().await {
            Some(Command::Stop | Command::Retire) | None => return,
            Some(_) => {}
        }
    }
}
