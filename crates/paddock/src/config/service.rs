//! A `[services.NAME]` table: its kind, command, workers, timeouts, restart and
//! recycling settings, jobs, streams, GPUs and batches, each checked and defaulted.

use super::Health;
use super::Kind;
use super::ReloadStrategy;
use super::values::PortSpec;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::checker::Checker;
use super::raw::RawService;
use super::values::Name;
use super::{ConfigError, Instance, Restart, Service};

/// The service `name` from its table. `fixed_ports` holds the fixed ports claimed
/// so far (each with its service): a second claim is an error.
pub(super) fn build(
    c: &Checker,
    name: Name,
    mut rs: RawService,
    instance: &Instance,
    dir: &Path,
    fixed_ports: &mut BTreeMap<u16, String>,
) -> Result<Service, ConfigError> {
    let table = format!("services.{name}");
    check_name(c, &table, &name)?;
    let jobs = jobs(c, &table, &rs)?;
    let (gpu, gpu_workers) = rs.gpu().map_err(|(k, e)| c.at(&table, k, e))?;
    let (workers, scaling) = super::scaling::build(c, &table, &rs, gpu_workers.unwrap_or(1))?;
    check_env(c, &table, &rs)?;
    claim_port(c, &table, &rs, instance.listen.port(), &name, fixed_ports)?;
    check_kind(c, &table, &rs, workers)?;
    let health = match (rs.kind, rs.health.take(), rs.port) {
        (Kind::Process, None, Some(_)) => Some(Health::Tcp),
        (_, h, _) => h,
    };
    let max_frame = rs.max_frame.map(|b| b.0).unwrap_or(64 << 20);
    if !(4096..=1 << 31).contains(&max_frame) {
        return Err(c.at(&table, "max_frame", "must be between 4KiB and 2GiB".into()));
    }
    check_worker_only(c, &table, &rs, &gpu)?;
    let restart = restart(c, &table, &rs)?;
    check_listen_fd(c, &table, &rs, &health)?;
    let reload = reload(c, &table, &rs)?;
    let cwd = match rs.cwd {
        Some(p) if p.is_absolute() => p,
        Some(p) => dir.join(p),
        None => dir.to_path_buf(),
    };
    let [stream_idle_timeout, stream_write_timeout, cancel_grace] = [
        ("stream_idle_timeout", rs.stream_idle_timeout, 30),
        ("stream_write_timeout", rs.stream_write_timeout, 10),
        ("cancel_grace", rs.cancel_grace, 5),
    ]
    .map(|(key, v, secs)| c.dur(&table, key, v, Duration::from_secs(secs)));
    Ok(Service {
        name,
        kind: rs.kind,
        command: rs.command.0,
        workers,
        scaling,
        cwd,
        env: rs.env,
        startup_timeout: c.dur(
            &table,
            "startup_timeout",
            rs.startup_timeout,
            Duration::from_secs(60),
        )?,
        request_timeout: c.dur(
            &table,
            "request_timeout",
            rs.request_timeout,
            Duration::from_secs(30),
        )?,
        port: rs.port,
        health,
        health_interval: c.dur(
            &table,
            "health_interval",
            rs.health_interval,
            Duration::from_secs(5),
        )?,
        health_timeout: c.dur(
            &table,
            "health_timeout",
            rs.health_timeout,
            Duration::from_secs(2),
        )?,
        restart,
        reload,
        listen_fd: rs.listen_fd,
        start_stagger: match rs.start_stagger {
            None => Duration::ZERO,
            Some(_) => c.dur(&table, "start_stagger", rs.start_stagger, Duration::ZERO)?,
        },
        max_queue: c.num(
            &table,
            "max_queue",
            rs.max_queue.map(u64::from),
            256,
            0,
            1_000_000,
        )? as usize,
        queue_timeout: c.dur(
            &table,
            "queue_timeout",
            rs.queue_timeout.or(rs.request_timeout),
            Duration::from_secs(30),
        )?,
        retry_on_crash: c.num(
            &table,
            "retry_on_crash",
            rs.retry_on_crash.map(u64::from),
            0,
            0,
            100,
        )? as u32,
        poison_limit: c.num(
            &table,
            "poison_limit",
            rs.poison_limit.map(u64::from),
            2,
            1,
            100,
        )? as u32,
        max_requests: rs.max_requests.unwrap_or(0),
        max_rss: rs.max_rss.map(|b| b.0).unwrap_or(0),
        max_frame: max_frame as usize,
        max_attempts: jobs.max_attempts,
        jobs_share: jobs.share,
        job_backoff: jobs.backoff,
        job_retention: jobs.retention,
        job_max_body: jobs.max_body,
        job_max_result: jobs.max_result,
        stream_idle_timeout: stream_idle_timeout?,
        stream_write_timeout: stream_write_timeout?,
        cancel_grace: cancel_grace?,
        gpu,
        batch: super::batch::overrides(rs.batch)
            .map_err(|(m, key, e)| c.at(&format!("{table}.batch.{m}"), key, e))?,
        schedules: match (rs.kind, rs.schedule.is_empty()) {
            (_, true) => vec![],
            (Kind::Process, false) => {
                return Err(c.at(
                    &table,
                    "schedule",
                    "periodic jobs need a worker service (kind = \"worker\"): a process service runs no jobs".into(),
                ));
            }
            (Kind::Worker, false) => super::schedule::check(std::mem::take(&mut rs.schedule))
                .map_err(|(i, key, e)| c.at(&format!("{table}.schedule[{i}]"), key, e))?,
        },
    })
}

/// A service's durable-job settings, checked and defaulted.
struct Jobs {
    max_attempts: u32,
    share: f64,
    backoff: Duration,
    retention: Option<Duration>,
    max_body: u64,
    max_result: u64,
}

/// The job settings of the service whose table is `table`.
fn jobs(c: &Checker, table: &str, rs: &RawService) -> Result<Jobs, ConfigError> {
    if let Some(share) = rs.jobs_share
        && !(share > 0.0 && share <= 1.0)
    {
        return Err(c.at(table, "jobs_share", format!("{share} is not in (0, 1]")));
    }
    Ok(Jobs {
        max_attempts: c.num(
            table,
            "max_attempts",
            rs.max_attempts.map(u64::from),
            3,
            1,
            1000,
        )? as u32,
        share: rs.jobs_share.unwrap_or(0.5),
        backoff: c.dur(table, "job_backoff", rs.job_backoff, Duration::from_secs(1))?,
        retention: super::values::retention(rs.job_retention.as_deref())
            .map_err(|e| c.at(table, "job_retention", e.to_string()))?,
        max_body: rs.job_max_body.map_or(4 << 20, |b| b.0),
        max_result: rs.job_max_result.map_or(4 << 20, |b| b.0),
    })
}

/// Names the routes take for themselves.
fn check_name(c: &Checker, table: &str, name: &Name) -> Result<(), ConfigError> {
    if let Some(why) = match name.as_str() {
        "jobs" => Some("the job API (/v1/jobs)"),
        "admin" => Some("operator actions (/admin/...)"),
        _ => None,
    } {
        return Err(c.at(
            table,
            "",
            format!(
                "\"{}\" is reserved for {why}: choose another service name",
                name.as_str()
            ),
        ));
    }
    Ok(())
}

/// Environment variable names a process can be given.
fn check_env(c: &Checker, table: &str, rs: &RawService) -> Result<(), ConfigError> {
    for key in rs.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(c.at(
                table,
                "env",
                format!("invalid environment variable name {key:?}"),
            ));
        }
    }
    Ok(())
}

/// A fixed port: not the gateway's, and not another service's (`fixed_ports` holds
/// the claims so far).
fn claim_port(
    c: &Checker,
    table: &str,
    rs: &RawService,
    listen_port: u16,
    name: &Name,
    fixed_ports: &mut BTreeMap<u16, String>,
) -> Result<(), ConfigError> {
    if let Some(PortSpec::Fixed(p)) = rs.port {
        if p == listen_port {
            return Err(c.at(
                table,
                "port",
                format!("port {p} is the gateway's own port (instance.listen)"),
            ));
        }
        if let Some(other) = fixed_ports.insert(p, name.to_string()) {
            return Err(c.at(
                table,
                "port",
                format!(
                    "port {p} is also used by service {other:?}; two services cannot share a port"
                ),
            ));
        }
    }
    Ok(())
}

/// What each kind needs and refuses: a process service proves readiness by a port
/// or an exec probe; a worker service is reached through the gateway.
fn check_kind(c: &Checker, table: &str, rs: &RawService, workers: u32) -> Result<(), ConfigError> {
    match rs.kind {
        Kind::Process => {
            if rs.port.is_none() && !matches!(rs.health, Some(Health::Exec(_))) {
                return Err(c.at(
                    table,
                    "",
                    "a process service needs `port` (a number or \"auto\") or `health = { exec = [...] }` to prove it is ready".into(),
                ));
            }
            if rs.port.is_none() && matches!(rs.health, Some(Health::Http(_) | Health::Tcp)) {
                return Err(c.at(table, "health", "an http or tcp probe needs `port`".into()));
            }
            if workers > 1 && matches!(rs.port, Some(PortSpec::Fixed(_))) {
                return Err(c.at(
                    table,
                    "workers",
                    "a process service with a fixed port runs 1 worker (the port can be bound once); use port = \"auto\"".into(),
                ));
            }
        }
        Kind::Worker => {
            if rs.health.is_some() {
                return Err(c.at(
                    table,
                    "health",
                    "`health` is for kind = \"process\"; a worker service is ready when its worker sends READY".into(),
                ));
            }
            if rs.port.is_some() {
                return Err(c.at(table, "port", "`port` is for kind = \"process\"; worker services are reached through the gateway".into()));
            }
        }
    }
    Ok(())
}

/// How failures are met and how long a stop may take.
fn restart(c: &Checker, table: &str, rs: &RawService) -> Result<Restart, ConfigError> {
    let backoff_initial = c.dur(
        table,
        "backoff_initial",
        rs.backoff_initial,
        Duration::from_secs(1),
    )?;
    let backoff_max = c.dur(
        table,
        "backoff_max",
        rs.backoff_max,
        Duration::from_secs(30),
    )?;
    if backoff_max < backoff_initial {
        return Err(c.at(
            table,
            "backoff_max",
            "must not be less than backoff_initial".into(),
        ));
    }
    Ok(Restart {
        stop_timeout: c.dur(
            table,
            "stop_timeout",
            rs.stop_timeout,
            Duration::from_secs(10),
        )?,
        health_failures: c.num(
            table,
            "health_failures",
            rs.health_failures.map(u64::from),
            3,
            1,
            1000,
        )? as u32,
        backoff_initial,
        backoff_max,
        crash_loop_failures: c.num(
            table,
            "crash_loop_failures",
            rs.crash_loop_failures.map(u64::from),
            5,
            1,
            1000,
        )? as u32,
        crash_loop_window: c.dur(
            table,
            "crash_loop_window",
            rs.crash_loop_window,
            Duration::from_secs(60),
        )?,
        stable_after: c.dur(
            table,
            "stable_after",
            rs.stable_after,
            Duration::from_secs(10),
        )?,
    })
}

/// Keys that only a worker service has.
fn check_worker_only(
    c: &Checker,
    table: &str,
    rs: &RawService,
    gpu: &super::gpu::Gpu,
) -> Result<(), ConfigError> {
    let worker_only = [
        ("max_queue", rs.max_queue.is_some()),
        ("queue_timeout", rs.queue_timeout.is_some()),
        ("retry_on_crash", rs.retry_on_crash.is_some()),
        ("poison_limit", rs.poison_limit.is_some()),
        ("max_requests", rs.max_requests.is_some()),
        ("max_rss", rs.max_rss.is_some()),
        ("max_gpu_memory", gpu.max_memory > 0),
        ("max_frame", rs.max_frame.is_some()),
        ("max_attempts", rs.max_attempts.is_some()),
        ("jobs_share", rs.jobs_share.is_some()),
        ("job_backoff", rs.job_backoff.is_some()),
        ("batch", !rs.batch.is_empty()),
        ("job_retention", rs.job_retention.is_some()),
        ("job_max_body", rs.job_max_body.is_some()),
        ("job_max_result", rs.job_max_result.is_some()),
        ("stream_idle_timeout", rs.stream_idle_timeout.is_some()),
        ("stream_write_timeout", rs.stream_write_timeout.is_some()),
        ("cancel_grace", rs.cancel_grace.is_some()),
    ];
    if rs.kind == Kind::Process
        && let Some((key, _)) = worker_only.iter().find(|(_, set)| *set)
    {
        return Err(c.at(
            table,
            key,
            format!("`{key}` applies to kind = \"worker\" services only"),
        ));
    }
    Ok(())
}

/// `listen_fd` needs a process service with a port, and a probe that a socket
/// paddock holds cannot fake.
fn check_listen_fd(
    c: &Checker,
    table: &str,
    rs: &RawService,
    health: &Option<Health>,
) -> Result<(), ConfigError> {
    if rs.listen_fd {
        if rs.kind != Kind::Process || rs.port.is_none() {
            return Err(c.at(
                table,
                "listen_fd",
                "listen_fd is for kind = \"process\" services with a `port`".into(),
            ));
        }
        if !matches!(health, Some(Health::Http(_) | Health::Exec(_))) {
            return Err(c.at(
                table,
                "listen_fd",
                "with listen_fd the kernel accepts connections on paddock's socket before the program runs, so a tcp probe (the default) proves nothing: set health = { http = \"/path\" } or { exec = [...] }".into(),
            ));
        }
    }
    Ok(())
}

/// How a reload replaces each worker.
fn reload(c: &Checker, table: &str, rs: &RawService) -> Result<ReloadStrategy, ConfigError> {
    Ok(match (rs.kind, rs.reload) {
        (Kind::Process, Some(ReloadStrategy::StartFirst)) => {
            return Err(c.at(
                table,
                "reload",
                "a process service is replaced in place (its port may be fixed): only \"stop-first\" applies".into(),
            ));
        }
        (Kind::Process, _) => ReloadStrategy::StopFirst,
        (Kind::Worker, r) => r.unwrap_or(ReloadStrategy::StartFirst),
    })
}
