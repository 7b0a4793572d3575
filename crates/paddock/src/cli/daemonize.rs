//! Becoming the daemon, the same way for `start` (in the forked child) and `run` (in
//! the foreground): take the instance lock and describe this process in it, set up
//! the daemon's own log, then hand over to [`crate::daemon::run`].
//!
//! Both callers have already forked the reaper while single-threaded; nothing here
//! starts a thread before the lock is held.

use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::daemon::{self, start_report::Reporter};
use crate::exit;
use crate::instance::{LockInfo, Paths};

use super::output;

/// Takes the lock, starts the log, runs the daemon to its end; returns its exit
/// code. `ansi`: colours in the log when stderr is a terminal (`run`).
pub fn run_daemon(
    config: Config,
    paths: Paths,
    reaper: paddock_sys::reaper::Reaper,
    mut reporter: Reporter,
    ansi: bool,
) -> i32 {
    let lock = match take_lock(&config, &paths) {
        Ok(l) => l,
        Err((code, message)) => {
            reporter.verdict(code, &message, None);
            return code;
        }
    };
    init_tracing(ansi, config.instance.log_format);
    daemon::run(daemon::Launch {
        config,
        paths,
        lock,
        reaper,
        reporter,
        started_at: SystemTime::now(),
    })
}

/// Takes the instance lock and writes our description into it.
fn take_lock(config: &Config, paths: &Paths) -> Result<paddock_sys::lock::HeldLock, (i32, String)> {
    let held = paddock_sys::lock::try_acquire(&paths.lock, Duration::from_millis(300))
        .map_err(|e| (exit::FAILURE, e.to_string()))?;
    let Some(mut lock) = held else {
        return Err((exit::ALREADY_RUNNING, already_running(config, paths)));
    };
    let info = LockInfo::of_this_process(config, SystemTime::now());
    lock.write_info(&serde_json::to_string(&info).unwrap_or_default())
        .map_err(|e| (exit::FAILURE, e.to_string()))?;
    Ok(lock)
}

/// The daemon's own log goes to stderr: the terminal or journald with `run`, the
/// instance's daemon.log with `start` (stderr was redirected there). Level from
/// `PADDOCK_LOG` (default info); `log_format = "json"`: one JSON object a line.
fn init_tracing(ansi: bool, format: crate::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PADDOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Text => builder
            .with_ansi(ansi && output::stderr_is_tty())
            .try_init(),
        crate::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// The message for an instance that is already running.
fn already_running(config: &Config, paths: &Paths) -> String {
    match LockInfo::read_settled(&paths.lock) {
        Some(i) => format!(
            "instance {} is already running: {}",
            config.instance.name,
            i.describe()
        ),
        None => format!(
            "instance {} (port {}) is already running (its lock {} is held)",
            config.instance.name,
            config.instance.listen.port(),
            paths.lock.display()
        ),
    }
}

/// What `start` and `run` do first: every file and folder the daemon makes is
/// private (0600/0700), whatever the umask (workers get the umask back,
/// paddock_sys::limits), and the instance's folders exist. Err: the exit code,
/// the reason said.
pub(super) fn prepare(config: &Config) -> Result<Paths, i32> {
    paddock_sys::limits::private_umask();
    let paths = Paths::of(config);
    if let Err(e) = paths.create() {
        super::output::error(&format!(
            "cannot create the state folder {}: {e}",
            paths.dir.display()
        ));
        return Err(crate::exit::FAILURE);
    }
    Ok(paths)
}
