//! The config file, `paddock.toml`: parsing, defaults and validation.
//!
//! Invariant: every command loads the config through [`load`] before doing anything
//! else, so a config error always stops the command with exit 2 and a message that
//! names the file, line, column and key. Values are checked while parsing where they
//! can be (durations, names, commands); cross-field rules (two services on one port)
//! are checked afterwards and located in the source by [`locate`].

mod batch;
pub mod gpu;
mod locate;
mod model;
mod raw;
#[cfg(test)]
mod tests;
pub mod values;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use model::{Config, Health, Instance, Kind, ReloadStrategy, Service, Store};
use raw::RawConfig;
use values::humanize;
pub use values::{Dur, MAX_DURATION, MAX_WORKERS, MIN_DURATION, Name, PortSpec, default_state_dir};

/// `job_store_max_size` when the config says nothing: 1 GiB of jobs.
pub const DEFAULT_JOB_STORE_MAX: u64 = 1 << 30;

/// A config error: where it is, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {}{message}", file.display(), key_prefix(key))]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("`{key}`: ")
    }
}

/// Reads and validates `path`; `port` overrides the listen port (another instance).
pub fn load(path: &Path, port: Option<u16>) -> Result<Config, ConfigError> {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(&abs).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&abs, &text, port)
}

/// An error about `table.key` of the config file at `path`, located in its text (at
/// the file's start where the key is not written: a default is at fault).
pub fn error_at(path: &Path, table: &str, key: &str, message: String) -> ConfigError {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let offset = locate::find_key(&text, table, key);
    let (line, column) = locate::line_col(&text, offset);
    ConfigError::Invalid {
        file: path.to_path_buf(),
        line,
        column,
        key: format!("{table}.{key}"),
        message,
    }
}

/// Validates `text` as the contents of the config file `path`.
pub fn parse(path: &Path, text: &str, port: Option<u16>) -> Result<Config, ConfigError> {
    let invalid = |offset: usize, key: String, message: String| {
        let (line, column) = locate::line_col(text, offset);
        ConfigError::Invalid {
            file: path.to_path_buf(),
            line,
            column,
            key,
            message,
        }
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        invalid(
            offset,
            locate::key_path_at(text, offset),
            e.message().trim().to_string(),
        )
    })?;
    let at = |table: &str, key: &str, message: String| {
        let offset = locate::find_key(text, table, key);
        let full = if key.is_empty() {
            table.to_string()
        } else {
            format!("{table}.{key}")
        };
        invalid(offset, full, message)
    };

    // Every number is bounded: a value that cannot work (a 0s deadline that kills
    // every worker, 10^8 workers) is refused here, naming the key and its line.
    let dur = |table: &str, key: &str, v: Option<Dur>, default: Duration| {
        let d = v.map(|d| d.0).unwrap_or(default);
        if d < MIN_DURATION || d > MAX_DURATION {
            return Err(at(
                table,
                key,
                format!(
                    "{} is out of range: write between 1ms and 720h (30 days)",
                    humanize(d)
                ),
            ));
        }
        Ok(d)
    };
    let num = |table: &str, key: &str, v: Option<u64>, default: u64, min: u64, max: u64| {
        let n = v.unwrap_or(default);
        if n < min || n > max {
            return Err(at(
                table,
                key,
                format!("{n} is out of range: write between {min} and {max}"),
            ));
        }
        Ok(n)
    };
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let ri = raw.instance;
    let name = match ri.name {
        Some(n) => n,
        None => Name::sanitize(
            dir.file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("paddock"),
        ),
    };
    let mut listen: SocketAddr = match &ri.listen {
        None => "127.0.0.1:8700".parse().expect("literal address"),
        Some(s) => s.parse().map_err(|_| {
            at(
                "instance",
                "listen",
                format!("invalid address {s:?}: write an IP and a port, e.g. \"127.0.0.1:8700\""),
            )
        })?,
    };
    if let Some(p) = port {
        if p == 0 {
            return Err(at("instance", "listen", "--port 0 is not a port".into()));
        }
        listen.set_port(p);
    } else if listen.port() == 0 {
        return Err(at(
            "instance",
            "listen",
            "the listen port must not be 0".into(),
        ));
    }
    // A blank token would lock every client out (no header can match it): refuse it
    // here rather than answer 401 to everyone.
    if let Some(t) = &ri.auth_token {
        if t.trim().is_empty() {
            return Err(at(
                "instance",
                "auth_token",
                "the token is blank: write a secret of at least one visible character, or remove the key".into(),
            ));
        }
        if t.trim() != t || t.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(at(
                "instance",
                "auth_token",
                "a bearer token is visible ASCII without spaces (RFC 6750): clients could not send this one".into(),
            ));
        }
    }
    if !listen.ip().is_loopback() && ri.auth_token.is_none() {
        return Err(at(
            "instance",
            "listen",
            format!(
                "{listen} is reachable from other machines: set instance.auth_token, or listen on 127.0.0.1"
            ),
        ));
    }
    let state_dir = match ri.state_dir {
        Some(p) if p.is_absolute() => p,
        Some(p) => dir.join(p),
        None => default_state_dir(),
    };
    let log_max_files = num(
        "instance",
        "log_max_files",
        ri.log_max_files.map(u64::from),
        5,
        1,
        1000,
    )? as u32;
    let store = match ri.store.as_deref() {
        None | Some("sqlite") => Store::Sqlite(None),
        Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
            Store::Postgres(s.to_string())
        }
        Some(s) if s.starts_with("sqlite:") => {
            let p = PathBuf::from(&s["sqlite:".len()..]);
            Store::Sqlite(Some(if p.is_absolute() { p } else { dir.join(p) }))
        }
        Some(s) => {
            return Err(at(
                "instance",
                "store",
                format!(
                    "unknown job store {s:?}: write \"sqlite\", \"sqlite:PATH\" or \"postgres://user@host:port/db\""
                ),
            ));
        }
    };
    let lease_timeout = dur(
        "instance",
        "lease_timeout",
        ri.lease_timeout,
        Duration::from_secs(30),
    )?;
    if lease_timeout < Duration::from_millis(300) {
        return Err(at(
            "instance",
            "lease_timeout",
            "must be at least 300ms".into(),
        ));
    }
    let job_store_max_bytes = num(
        "instance",
        "job_store_max_size",
        ri.job_store_max_size.map(|b| b.0),
        DEFAULT_JOB_STORE_MAX,
        1 << 20,
        1 << 50,
    )?;
    let max_connections = num(
        "instance",
        "max_connections",
        ri.max_connections,
        4096,
        1,
        1_000_000,
    )? as usize;
    let header_timeout = dur(
        "instance",
        "header_timeout",
        ri.header_timeout,
        Duration::from_secs(10),
    )?;
    let body_timeout = dur(
        "instance",
        "body_timeout",
        ri.body_timeout,
        Duration::from_secs(60),
    )?;
    let expose_errors = ri.expose_errors.unwrap_or(false);
    if expose_errors && !listen.ip().is_loopback() {
        return Err(at(
            "instance",
            "expose_errors",
            format!(
                "tracebacks would reach other machines through {listen}: expose_errors needs a loopback listen address"
            ),
        ));
    }
    let instance = Instance {
        expose_errors,
        max_connections,
        header_timeout,
        body_timeout,
        lease_timeout,
        job_store_max_bytes,
        store,
        name,
        listen,
        state_dir,
        auth_token: ri.auth_token,
        log_max_bytes: ri.log_max_size.map(|b| b.0).unwrap_or(10 << 20).max(4096),
        log_max_files,
    };

    let mut services = vec![];
    let mut fixed_ports: BTreeMap<u16, String> = BTreeMap::new();
    for (name, mut rs) in raw.services {
        let table = format!("services.{name}");
        if let Some(why) = match name.as_str() {
            "jobs" => Some("the job API (/v1/jobs)"),
            "admin" => Some("operator actions (/admin/...)"),
            _ => None,
        } {
            return Err(at(
                &table,
                "",
                format!(
                    "\"{}\" is reserved for {why}: choose another service name",
                    name.as_str()
                ),
            ));
        }
        if let Some(share) = rs.jobs_share
            && !(share > 0.0 && share <= 1.0)
        {
            return Err(at(
                &table,
                "jobs_share",
                format!("{share} is not in (0, 1]"),
            ));
        }
        let (gpu, gpu_workers) = rs.gpu().map_err(|(k, e)| at(&table, k, e))?;
        let workers = rs.workers.map(u64::from);
        let workers = num(
            &table,
            "workers",
            workers,
            gpu_workers.unwrap_or(1),
            1,
            MAX_WORKERS,
        )?;
        let workers = workers as u32;
        for key in rs.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(at(
                    &table,
                    "env",
                    format!("invalid environment variable name {key:?}"),
                ));
            }
        }
        if let Some(PortSpec::Fixed(p)) = rs.port {
            if p == listen.port() {
                return Err(at(
                    &table,
                    "port",
                    format!("port {p} is the gateway's own port (instance.listen)"),
                ));
            }
            if let Some(other) = fixed_ports.insert(p, name.to_string()) {
                return Err(at(
                    &table,
                    "port",
                    format!(
                        "port {p} is also used by service {other:?}; two services cannot share a port"
                    ),
                ));
            }
        }
        match rs.kind {
            Kind::Process => {
                if rs.port.is_none() && !matches!(rs.health, Some(Health::Exec(_))) {
                    return Err(at(
                        &table,
                        "",
                        "a process service needs `port` (a number or \"auto\") or `health = { exec = [...] }` to prove it is ready".into(),
                    ));
                }
                if rs.port.is_none() && matches!(rs.health, Some(Health::Http(_) | Health::Tcp)) {
                    return Err(at(
                        &table,
                        "health",
                        "an http or tcp probe needs `port`".into(),
                    ));
                }
                if workers > 1 && matches!(rs.port, Some(PortSpec::Fixed(_))) {
                    return Err(at(
                        &table,
                        "workers",
                        "a process service with a fixed port runs 1 worker (the port can be bound once); use port = \"auto\"".into(),
                    ));
                }
            }
            Kind::Worker => {
                if rs.health.is_some() {
                    return Err(at(
                        &table,
                        "health",
                        "`health` is for kind = \"process\"; a worker service is ready when its worker sends READY".into(),
                    ));
                }
                if rs.port.is_some() {
                    return Err(at(&table, "port", "`port` is for kind = \"process\"; worker services are reached through the gateway".into()));
                }
            }
        }
        let health = match (rs.kind, rs.health, rs.port) {
            (Kind::Process, None, Some(_)) => Some(Health::Tcp),
            (_, h, _) => h,
        };
        let backoff_initial = dur(
            &table,
            "backoff_initial",
            rs.backoff_initial,
            Duration::from_secs(1),
        )?;
        let backoff_max = dur(
            &table,
            "backoff_max",
            rs.backoff_max,
            Duration::from_secs(30),
        )?;
        if backoff_max < backoff_initial {
            return Err(at(
                &table,
                "backoff_max",
                "must not be less than backoff_initial".into(),
            ));
        }
        let max_frame = rs.max_frame.map(|b| b.0).unwrap_or(64 << 20);
        if !(4096..=1 << 31).contains(&max_frame) {
            return Err(at(
                &table,
                "max_frame",
                "must be between 4KiB and 2GiB".into(),
            ));
        }
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
            return Err(at(
                &table,
                key,
                format!("`{key}` applies to kind = \"worker\" services only"),
            ));
        }
        if rs.listen_fd {
            if rs.kind != Kind::Process || rs.port.is_none() {
                return Err(at(
                    &table,
                    "listen_fd",
                    "listen_fd is for kind = \"process\" services with a `port`".into(),
                ));
            }
            if !matches!(health, Some(Health::Http(_) | Health::Exec(_))) {
                return Err(at(
                    &table,
                    "listen_fd",
                    "with listen_fd the kernel accepts connections on paddock's socket before the program runs, so a tcp probe (the default) proves nothing: set health = { http = \"/path\" } or { exec = [...] }".into(),
                ));
            }
        }
        let reload = match (rs.kind, rs.reload) {
            (Kind::Process, Some(ReloadStrategy::StartFirst)) => {
                return Err(at(
                    &table,
                    "reload",
                    "a process service is replaced in place (its port may be fixed): only \"stop-first\" applies".into(),
                ));
            }
            (Kind::Process, _) => ReloadStrategy::StopFirst,
            (Kind::Worker, r) => r.unwrap_or(ReloadStrategy::StartFirst),
        };
        let cwd = match rs.cwd {
            Some(p) if p.is_absolute() => p,
            Some(p) => dir.join(p),
            None => dir.clone(),
        };
        let [stream_idle_timeout, stream_write_timeout, cancel_grace] = [
            ("stream_idle_timeout", rs.stream_idle_timeout, 30),
            ("stream_write_timeout", rs.stream_write_timeout, 10),
            ("cancel_grace", rs.cancel_grace, 5),
        ]
        .map(|(key, v, secs)| dur(&table, key, v, Duration::from_secs(secs)));
        services.push(Service {
            name,
            kind: rs.kind,
            command: rs.command.0,
            workers,
            cwd,
            env: rs.env,
            startup_timeout: dur(
                &table,
                "startup_timeout",
                rs.startup_timeout,
                Duration::from_secs(60),
            )?,
            request_timeout: dur(
                &table,
                "request_timeout",
                rs.request_timeout,
                Duration::from_secs(30),
            )?,
            stop_timeout: dur(
                &table,
                "stop_timeout",
                rs.stop_timeout,
                Duration::from_secs(10),
            )?,
            port: rs.port,
            health,
            health_interval: dur(
                &table,
                "health_interval",
                rs.health_interval,
                Duration::from_secs(5),
            )?,
            health_timeout: dur(
                &table,
                "health_timeout",
                rs.health_timeout,
                Duration::from_secs(2),
            )?,
            health_failures: num(
                &table,
                "health_failures",
                rs.health_failures.map(u64::from),
                3,
                1,
                1000,
            )? as u32,
            backoff_initial,
            backoff_max,
            crash_loop_failures: num(
                &table,
                "crash_loop_failures",
                rs.crash_loop_failures.map(u64::from),
                5,
                1,
                1000,
            )? as u32,
            crash_loop_window: dur(
                &table,
                "crash_loop_window",
                rs.crash_loop_window,
                Duration::from_secs(60),
            )?,
            stable_after: dur(
                &table,
                "stable_after",
                rs.stable_after,
                Duration::from_secs(10),
            )?,
            reload,
            listen_fd: rs.listen_fd,
            start_stagger: match rs.start_stagger {
                None => Duration::ZERO,
                Some(_) => dur(&table, "start_stagger", rs.start_stagger, Duration::ZERO)?,
            },
            max_queue: num(
                &table,
                "max_queue",
                rs.max_queue.map(u64::from),
                256,
                0,
                1_000_000,
            )? as usize,
            queue_timeout: dur(
                &table,
                "queue_timeout",
                rs.queue_timeout.or(rs.request_timeout),
                Duration::from_secs(30),
            )?,
            retry_on_crash: num(
                &table,
                "retry_on_crash",
                rs.retry_on_crash.map(u64::from),
                0,
                0,
                100,
            )? as u32,
            poison_limit: num(
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
            max_attempts: num(
                &table,
                "max_attempts",
                rs.max_attempts.map(u64::from),
                3,
                1,
                1000,
            )? as u32,
            jobs_share: rs.jobs_share.unwrap_or(0.5),
            job_backoff: dur(
                &table,
                "job_backoff",
                rs.job_backoff,
                Duration::from_secs(1),
            )?,
            job_retention: values::retention(rs.job_retention.as_deref())
                .map_err(|e| at(&table, "job_retention", e))?,
            job_max_body: rs.job_max_body.map_or(4 << 20, |b| b.0),
            job_max_result: rs.job_max_result.map_or(4 << 20, |b| b.0),
            stream_idle_timeout: stream_idle_timeout?,
            stream_write_timeout: stream_write_timeout?,
            cancel_grace: cancel_grace?,
            gpu,
            batch: batch::overrides(rs.batch)
                .map_err(|(m, key, e)| at(&format!("{table}.batch.{m}"), key, e))?,
        });
    }
    if services.is_empty() {
        return Err(invalid(
            0,
            "services".into(),
            "no services: add a [services.NAME] table".into(),
        ));
    }
    Ok(Config {
        path: path.to_path_buf(),
        instance,
        services,
    })
}
