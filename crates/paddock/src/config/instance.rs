//! The `[instance]` table: its name, address, token, state folder, job store and
//! limits, each checked and defaulted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::checker::Checker;
use super::raw::RawInstance;
use super::values::{Name, default_state_dir};
use super::{ConfigError, DEFAULT_JOB_STORE_MAX, Instance, LogFormat, Store};

/// The instance from its table; `dir` is the config file's folder, `port` the
/// command line's `--port`.
pub(super) fn build(
    c: &Checker,
    ri: RawInstance,
    dir: &Path,
    port: Option<u16>,
) -> Result<Instance, ConfigError> {
    let name = match ri.name.clone() {
        Some(n) => n,
        None => Name::sanitize(
            dir.file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("paddock"),
        ),
    };
    let listen = listen(c, &ri, port)?;
    check_token(c, &ri, listen)?;
    let state_dir = match ri.state_dir.clone() {
        Some(p) if p.is_absolute() => p,
        Some(p) => dir.join(p),
        None => default_state_dir(),
    };
    let log_max_files = c.num(
        "instance",
        "log_max_files",
        ri.log_max_files.map(u64::from),
        5,
        1,
        1000,
    )? as u32;
    let store = store(c, &ri, dir)?;
    let lease_timeout = c.dur(
        "instance",
        "lease_timeout",
        ri.lease_timeout,
        Duration::from_secs(30),
    )?;
    if lease_timeout < Duration::from_millis(300) {
        return Err(c.at("instance", "lease_timeout", "must be at least 300ms".into()));
    }
    let job_store_max_bytes = c.num(
        "instance",
        "job_store_max_size",
        ri.job_store_max_size.map(|b| b.0),
        DEFAULT_JOB_STORE_MAX,
        1 << 20,
        1 << 50,
    )?;
    let max_connections = c.num(
        "instance",
        "max_connections",
        ri.max_connections,
        4096,
        1,
        1_000_000,
    )? as usize;
    let header_timeout = c.dur(
        "instance",
        "header_timeout",
        ri.header_timeout,
        Duration::from_secs(10),
    )?;
    let body_timeout = c.dur(
        "instance",
        "body_timeout",
        ri.body_timeout,
        Duration::from_secs(60),
    )?;
    let expose_errors = ri.expose_errors.unwrap_or(false);
    if expose_errors && !listen.ip().is_loopback() {
        return Err(c.at(
            "instance",
            "expose_errors",
            format!(
                "tracebacks would reach other machines through {listen}: expose_errors needs a loopback listen address"
            ),
        ));
    }
    let log_format = log_format(c, &ri)?;
    let memory_budget = match ri.memory_budget {
        None => 0,
        Some(b) if b.0 < 1 << 20 => {
            return Err(c.at(
                "instance",
                "memory_budget",
                format!(
                    "{} bytes is too small for any model: write at least 1MiB (\"12GiB\")",
                    b.0
                ),
            ));
        }
        Some(b) => b.0,
    };
    Ok(Instance {
        memory_budget,
        log_format,
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
    })
}

/// The gateway's address; `port` (the command line's `--port`) replaces its port.
fn listen(c: &Checker, ri: &RawInstance, port: Option<u16>) -> Result<SocketAddr, ConfigError> {
    let mut listen: SocketAddr = match &ri.listen {
        None => "127.0.0.1:8700".parse().expect("literal address"),
        Some(s) => s.parse().map_err(|_| {
            c.at(
                "instance",
                "listen",
                format!("invalid address {s:?}: write an IP and a port, e.g. \"127.0.0.1:8700\""),
            )
        })?,
    };
    if let Some(p) = port {
        if p == 0 {
            return Err(c.at("instance", "listen", "--port 0 is not a port".into()));
        }
        listen.set_port(p);
    } else if listen.port() == 0 {
        return Err(c.at("instance", "listen", "the listen port must not be 0".into()));
    }
    Ok(listen)
}

/// A token a client can send, and one wherever the gateway is reachable from
/// other machines.
fn check_token(c: &Checker, ri: &RawInstance, listen: SocketAddr) -> Result<(), ConfigError> {
    // A blank token would lock every client out (no header can match it): refuse it
    // here rather than answer 401 to everyone.
    if let Some(t) = &ri.auth_token {
        if t.trim().is_empty() {
            return Err(c.at(
                "instance",
                "auth_token",
                "the token is blank: write a secret of at least one visible character, or remove the key".into(),
            ));
        }
        if t.trim() != t || t.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(c.at(
                "instance",
                "auth_token",
                "a bearer token is visible ASCII without spaces (RFC 6750): clients could not send this one".into(),
            ));
        }
    }
    if !listen.ip().is_loopback() && ri.auth_token.is_none() {
        return Err(c.at(
            "instance",
            "listen",
            format!(
                "{listen} is reachable from other machines: set instance.auth_token, or listen on 127.0.0.1"
            ),
        ));
    }
    Ok(())
}

/// Where durable jobs live.
fn store(c: &Checker, ri: &RawInstance, dir: &Path) -> Result<Store, ConfigError> {
    Ok(match ri.store.as_deref() {
        None | Some("sqlite") => Store::Sqlite(None),
        Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
            Store::Postgres(s.to_string())
        }
        Some(s) if s.starts_with("sqlite:") => {
            let p = PathBuf::from(&s["sqlite:".len()..]);
            Store::Sqlite(Some(if p.is_absolute() { p } else { dir.join(p) }))
        }
        Some(s) => {
            return Err(c.at(
                "instance",
                "store",
                format!(
                    "unknown job store {s:?}: write \"sqlite\", \"sqlite:PATH\" or \"postgres://user@host:port/db\""
                ),
            ));
        }
    })
}

/// How the daemon writes its own log.
fn log_format(c: &Checker, ri: &RawInstance) -> Result<LogFormat, ConfigError> {
    Ok(match ri.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(c.at(
                "instance",
                "log_format",
                format!("unknown log format {other:?}: write \"text\" or \"json\""),
            ));
        }
    })
}
