//! The daemon: supervisor + HTTP gateway + control socket, in one process.
//!
//! Start-up order (the reasons are in docs/architecture.md):
//! 1. (`start` only) fork and `setsid` — done by the CLI before we get here;
//! 2. fork the reaper, take the instance lock — also before we get here;
//! 3. build the tokio runtime by hand (no thread existed before this point);
//! 4. kill process groups a dead predecessor left, start the spawner thread, bind the
//!    control socket and the gateway, launch every worker;
//! 5. report progress, then one verdict, to whoever waits;
//! 6. serve until SIGTERM, SIGINT or `paddock stop`; stop every worker; exit, which
//!    releases the lock.

mod control_server;
mod coordinator;
mod dispatch;
mod env;
mod failure;
mod file_watch;
mod gpu_sampler;
mod handles;
mod http;
pub(crate) mod jobs;
mod lifecycle;
mod logsink;
mod messages;
mod metrics;
mod notify;
mod ports;
mod probe;
mod process_groups;
mod scaling;
mod spawner;
pub mod start_report;
mod supervisor;
mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::exit;
use crate::instance::Paths;
use handles::SharedRef;
use start_report::Reporter;
use worker::StartupEvent;

/// Everything the daemon is handed by the CLI after the fork and the lock.
pub struct Launch {
    pub config: Config,
    pub paths: Paths,
    pub lock: paddock_sys::lock::HeldLock,
    pub reaper: paddock_sys::reaper::Reaper,
    pub reporter: Reporter,
    pub started_at: SystemTime,
}

/// A start that failed: the verdict, sent only once everything the daemon started
/// is gone (see [`run`]).
struct Failure {
    code: i32,
    message: String,
    detail: Option<String>,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            detail: None,
        }
    }
}

/// Runs the daemon to its end; returns the process's exit code.
///
/// A failed start is reported last: after every worker is stopped and its group has
/// exited, the runtime is shut down, the reaper has exited and the lock is released.
/// Whoever reads the verdict may then take it literally: nothing is left running.
pub fn run(launch: Launch) -> i32 {
    let Launch {
        config,
        paths,
        lock,
        reaper,
        mut reporter,
        started_at,
    } = launch;
    let reaper_pid = reaper.pid();
    // Descriptors: as many as the hard limit allows (the gateway caps its own
    // connections below that, so the control socket and workers always have some).
    let nofile = match paddock_sys::limits::raise_nofile() {
        Ok((soft, _)) => soft,
        Err(e) => {
            eprintln!("paddock: could not raise the descriptor limit: {e}");
            paddock_sys::limits::nofile_soft()
        }
    };
    let outcome = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("paddock-rt")
        .build()
    {
        Ok(rt) => {
            let outcome = rt.block_on(main(
                config,
                paths,
                reaper,
                &mut reporter,
                started_at,
                nofile,
                &lock,
            ));
            // Dropping the tasks closes the reaper's pipe: it exits at once.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            outcome
        }
        Err(e) => {
            drop(reaper);
            Err(Failure::new(
                exit::FAILURE,
                format!("could not start the async runtime: {e}"),
            ))
        }
    };
    // The reaper exits as soon as its pipe is closed (the runtime's tasks dropped).
    if !paddock_sys::detach::wait_child(reaper_pid, std::time::Duration::from_secs(2)) {
        tracing::warn!(pid = reaper_pid, "the reaper did not exit within 2s");
    }
    drop(lock);
    match outcome {
        Ok(code) => code,
        Err(f) => {
            reporter.verdict(f.code, &f.message, f.detail);
            f.code
        }
    }
}

async fn main(
    config: Config,
    paths: Paths,
    reaper: paddock_sys::reaper::Reaper,
    reporter: &mut Reporter,
    started_at: SystemTime,
    nofile: u64,
    lock: &paddock_sys::lock::HeldLock,
) -> Result<i32, Failure> {
    let started = Instant::now();
    let pid = std::process::id() as i32;
    tracing::info!(pid, instance = %config.instance.name, listen = %config.instance.listen, "daemon starting (paddock {})", env!("CARGO_PKG_VERSION"));
    // Steps 6 to 9 of docs/architecture.md, "Start-up sequence".
    let operator_token = operator_token(&config, &paths)?;
    kill_leftovers(&paths);
    let (spawner, groups) = start_spawner(reaper, &paths)?;
    let (control, http) = bind_sockets(&config, &paths)?;
    let (supervisor, startup) = launch_services(&config, &paths, spawner, groups)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let jobs = match open_jobs(&config, &paths, &supervisor, pid, started_at, &shutdown_rx).await {
        Ok(j) => j,
        Err(e) => {
            supervisor.stop().await;
            return Err(Failure::new(exit::FAILURE, e.to_string()));
        }
    };
    let shared = Arc::new(handles::Shared {
        config,
        paths,
        pid,
        started_at,
        started,
        supervisor,
        shutdown,
        jobs,
        jobs_lost: watch::channel(None).0,
        operator_token,
    });
    tokio::spawn(signals(shared.clone()));
    tokio::spawn(control_server::serve(control, shared.clone()));
    let gateway = serve_gateway(&shared, http, nofile, shutdown_rx.clone());
    if let Err(failure) = await_verdict(&shared, startup, reporter, shutdown_rx.clone()).await {
        tracing::error!("start failed: {}", failure.message);
        shared.request_stop();
        let _ = tokio::join!(gateway, stop_all(shared));
        return Err(failure);
    }
    report_ready(&shared, reporter);
    serve_until_stopped(&shared, lock, shutdown_rx).await;
    stop(shared, gateway).await;
    Ok(exit::OK)
}

/// What opens the operator routes (`/admin/*`: log lines, actions): the instance's
/// auth_token, or else a token of its own, kept 0600 in its folder, so that other
/// accounts on this machine, who can reach 127.0.0.1 too, cannot.
fn operator_token(config: &Config, paths: &Paths) -> Result<String, Failure> {
    match &config.instance.auth_token {
        Some(t) => Ok(t.clone()),
        None => paths.operator_token().map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!(
                    "cannot read or make the operator token {}: {e}",
                    paths.token.display()
                ),
            )
        }),
    }
}

/// Step 6: the process groups a dead predecessor left (only those that are still
/// the ones it started).
fn kill_leftovers(paths: &Paths) {
    let leftovers = process_groups::kill_leftovers(&paths.groups);
    if leftovers > 0 {
        tracing::warn!(
            "killed {leftovers} process group(s) left by a previous daemon of this instance"
        );
    }
}

/// Step 7a: the spawner thread, and the registry of worker process groups (which
/// tells the reaper of each).
fn start_spawner(
    reaper: paddock_sys::reaper::Reaper,
    paths: &Paths,
) -> Result<(spawner::Spawner, process_groups::Groups), Failure> {
    let spawner =
        spawner::Spawner::start(tokio::runtime::Handle::current(), Some(reaper.write_fd()))
            .map_err(|e| {
                Failure::new(
                    exit::FAILURE,
                    format!("could not start the spawner thread: {e}"),
                )
            })?;
    let groups = process_groups::Groups::start(reaper, paths.groups.clone());
    Ok((spawner, groups))
}

/// Step 7b: the control socket and the gateway's port; a port held by another
/// program fails the start, naming it.
fn bind_sockets(
    config: &Config,
    paths: &Paths,
) -> Result<(tokio::net::UnixListener, tokio::net::TcpListener), Failure> {
    let control = control_server::bind(&paths.socket).map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!(
                "cannot create the control socket {}: {e}",
                paths.socket.display()
            ),
        )
    })?;
    let listen = config.instance.listen;
    let http = ports::bind(listen).map_err(|e| {
        let who = ports::holder(listen.port())
            .map(|w| format!(" (held by {w})"))
            .unwrap_or_default();
        Failure::new(
            exit::FAILURE,
            format!(
                "cannot listen on {listen} for the gateway: {e}{who}; choose another with --port"
            ),
        )
    })?;
    Ok((control, http))
}

/// Step 7c: every service's port resolved and one actor per worker started. NVML is
/// loaded here, after the fork and inside the runtime, and read on a thread of its
/// own once a second.
fn launch_services(
    config: &Config,
    paths: &Paths,
    spawner: spawner::Spawner,
    groups: process_groups::Groups,
) -> Result<
    (
        supervisor::Supervisor,
        mpsc::UnboundedReceiver<StartupEvent>,
    ),
    Failure,
> {
    let gpus = paddock_sys::gpu::Gpus::load();
    let loaded = gpus.loaded();
    let sampler = Arc::new(gpu_sampler::start(
        Box::new(gpus),
        loaded,
        Duration::from_secs(1),
    ));
    supervisor::Supervisor::launch(
        config,
        spawner,
        groups,
        &paths.logs,
        Arc::new(metrics::Metrics::new()),
        sampler,
    )
    .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))
}

/// The gateway's connection loop, within the descriptor limit.
fn serve_gateway(
    shared: &SharedRef,
    http: tokio::net::TcpListener,
    nofile: u64,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let app = http::router(shared.clone());
    let limits = http::server::Limits {
        max_connections: gateway_cap(shared.config.instance.max_connections, nofile),
        header_timeout: shared.config.instance.header_timeout,
    };
    tracing::info!(
        "gateway: at most {} connections (descriptor limit {nofile})",
        limits.max_connections
    );
    tokio::spawn(http::server::serve(http, app, limits, shutdown))
}

/// Step 8: each worker's progress to whoever waits; the first failure is the
/// verdict. Each worker announced itself ready once, and one may have died since
/// (no longer "starting", it restarts quietly): success means every service is
/// ready now, within the longest `startup_timeout`.
async fn await_verdict(
    shared: &SharedRef,
    mut startup: mpsc::UnboundedReceiver<StartupEvent>,
    reporter: &mut Reporter,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Failure> {
    let interrupted = || Failure::new(exit::FAILURE, "interrupted while starting");
    let mut pending = shared.supervisor.worker_count();
    while pending > 0 {
        tokio::select! {
            ev = startup.recv() => match ev {
                Some(StartupEvent::Progress { service, worker, message }) => {
                    reporter.progress(&format!("{service}/{worker}"), &message);
                }
                Some(StartupEvent::Ready { service, worker }) => {
                    pending -= 1;
                    reporter.progress(&format!("{service}/{worker}"), "ready");
                }
                Some(StartupEvent::Failed { service, worker, code, message, tail }) => {
                    let message = start_report::shorten_shown(&message, &tail);
                    return Err(Failure {
                        code,
                        message: format!("service {service} (worker {worker}) {message}"),
                        detail: start_report::tail_block(&format!("{service}/{worker}"), &tail),
                    });
                }
                None => break,
            },
            _ = shutdown.wait_for(|s| *s) => return Err(interrupted()),
        }
    }
    let longest = shared
        .config
        .services
        .iter()
        .map(|s| s.startup_timeout)
        .max()
        .unwrap_or_default();
    let deadline = Instant::now() + longest;
    while !shared.status().instance.ready {
        if Instant::now() >= deadline {
            let why = shared
                .status()
                .services
                .iter()
                .filter_map(|s| s.reason.clone().map(|r| format!("{}: {r}", s.name)))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Failure::new(
                exit::TIMED_OUT,
                format!("not every service is ready: {why}"),
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = shutdown.wait_for(|s| *s) => return Err(interrupted()),
        }
    }
    Ok(())
}

/// Step 8's success: the verdict names every service, and systemd hears READY=1.
fn report_ready(shared: &SharedRef, reporter: &mut Reporter) {
    let summary = shared
        .supervisor
        .status()
        .iter()
        .map(|s| {
            let n = s.workers.len();
            let workers = match &s.scaling {
                Some(x) if x.min_workers < x.max_workers && n == 0 => {
                    format!(
                        "unloaded until a request comes, up to {} worker{}",
                        x.max_workers,
                        if x.max_workers == 1 { "" } else { "s" }
                    )
                }
                Some(x) if x.min_workers < x.max_workers => {
                    format!("{n} of up to {} workers", x.max_workers)
                }
                _ => format!("{n} worker{}", if n == 1 { "" } else { "s" }),
            };
            match s.port {
                Some(p) => format!("{} ({workers}, port {p})", s.name),
                None => format!("{} ({workers})", s.name),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let message = format!(
        "instance {} ready on http://{} (pid {}): {summary}",
        shared.config.instance.name, shared.config.instance.listen, shared.pid
    );
    tracing::info!("{message}");
    reporter.verdict(exit::OK, &message, None);
    notify::notify("READY=1");
}

/// Step 9: serve until asked to stop, checking once a second that the instance's
/// files are still where clients look for them.
async fn serve_until_stopped(
    shared: &SharedRef,
    lock: &paddock_sys::lock::HeldLock,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut relocked = vec![];
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = check.tick() => file_watch::check(shared, lock, &mut relocked),
        }
    }
}

/// Step 9's end: queued requests are answered 503 now, not after the connections
/// that wait for them have drained; the workers are told at once (no replacement is
/// spawned once a stop began) while the gateway waits for the answers to the
/// requests they are serving.
async fn stop(shared: SharedRef, gateway: tokio::task::JoinHandle<()>) {
    notify::notify("STOPPING=1");
    tracing::info!("stopping");
    for s in &shared.supervisor.services {
        if let Some(d) = &s.dispatcher {
            d.close();
        }
    }
    let _ = tokio::join!(gateway, stop_all(shared));
}

/// Opens the job store (after the fork, like every handle that may start a thread)
/// and starts one pump per worker service.
async fn open_jobs(
    config: &Config,
    paths: &Paths,
    supervisor: &supervisor::Supervisor,
    pid: i32,
    started_at: SystemTime,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<handles::Jobs>, jobs::StoreError> {
    let services: Vec<_> = supervisor
        .services
        .iter()
        .filter(|s| s.dispatcher.is_some())
        .collect();
    let metrics = supervisor.metrics.clone();
    if services.is_empty() {
        return Ok(None);
    }
    let owner = format!(
        "{}:{pid}@{}",
        hostname(),
        crate::timefmt::rfc3339(started_at)
    );
    let mut pumps = std::collections::HashMap::new();
    let mut cancelled = std::collections::HashMap::new();
    for s in &services {
        let (signals, rx) = jobs::pump::Signals::new();
        pumps.insert(s.config.name.to_string(), signals);
        cancelled.insert(s.config.name.to_string(), rx);
    }
    let (store, kind) = match &config.instance.store {
        crate::config::Store::Sqlite(path) => {
            let path = path.clone().unwrap_or_else(|| paths.dir.join("jobs.db"));
            let (store, recovered) = jobs::sqlite::open(&path, owner)?;
            if recovered > 0 {
                tracing::warn!(
                    "{recovered} job(s) were running when the previous daemon died: queued again"
                );
            }
            (store, ("sqlite", path.display().to_string()))
        }
        crate::config::Store::Postgres(url) => (
            jobs::postgres::open(url, owner, config.instance.lease_timeout, pumps.clone()).await?,
            ("postgres", jobs::postgres::redact(url)),
        ),
    };
    let mut pruned = std::collections::HashMap::new();
    for s in services {
        let name = s.config.name.as_str();
        let signals = (
            pumps[name].clone(),
            cancelled.remove(name).expect("one receiver per service"),
        );
        let dispatcher = s.dispatcher.clone().expect("filtered on dispatcher");
        pruned.insert(
            s.config.name.to_string(),
            jobs::prune::start(
                s.config.clone(),
                store.clone(),
                metrics.clone(),
                shutdown.clone(),
            ),
        );
        jobs::schedule::start(
            s.config.clone(),
            store.clone(),
            pumps[name].clone(),
            shutdown.clone(),
        );
        jobs::pump::start(
            s.config.clone(),
            store.clone(),
            dispatcher,
            signals,
            shutdown.clone(),
            config.instance.expose_errors,
        );
    }
    Ok(Some(handles::Jobs {
        size: jobs::size::StoreSize::start(store.clone(), shutdown.clone()),
        max_bytes: config.instance.job_store_max_bytes,
        store,
        kind,
        pumps,
        pruned,
    }))
}

/// Descriptors kept out of the gateway's reach: the control socket, workers' pipes
/// and sockets, log files, the job store.
const RESERVED_FDS: u64 = 256;

/// The gateway's connection cap: the configured one, but always leaving
/// `RESERVED_FDS` descriptors for everything else.
fn gateway_cap(configured: usize, nofile: u64) -> usize {
    let room = nofile.saturating_sub(RESERVED_FDS).max(16);
    configured.min(room as usize)
}

/// This machine's name, for job owners (several machines share one PostgreSQL).
fn hostname() -> String {
    paddock_sys::hostname().unwrap_or_else(|| "localhost".into())
}

async fn stop_all(shared: Arc<handles::Shared>) {
    shared.supervisor.stop().await;
    if let Some(j) = &shared.jobs {
        // What the pumps released or finished while stopping is committed before we exit.
        j.store.sync().await;
    }
    let _ = std::fs::remove_file(&shared.paths.socket);
    tracing::info!("stopped");
}

async fn signals(shared: Arc<handles::Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("{name} received: stopping gracefully");
    shared.request_stop();
}
