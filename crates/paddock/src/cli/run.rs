//! `paddock run`: the same daemon in the foreground. Also the shared steps of
//! becoming a daemon: taking the lock and setting up the daemon's log.

use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::daemon::{self, report::Reporter};
use crate::exit;
use crate::instance::{LockInfo, Paths};

use super::output;

pub fn run(config: Config) -> i32 {
    // Every file and folder the daemon makes is private (0600/0700), whatever
    // the umask; workers get the umask back (paddock_sys::limits).
    paddock_sys::limits::private_umask();
    let paths = Paths::of(&config);
    if let Err(e) = paths.create() {
        output::error(&format!(
            "cannot create the state folder {}: {e}",
            paths.dir.display()
        ));
        return exit::FAILURE;
    }
    let reaper = match paddock_sys::reaper::fork_reaper(&[]) {
        Ok(r) => r,
        Err(e) => {
            output::error(&format!("cannot start the reaper: {e}"));
            return exit::FAILURE;
        }
    };
    let lock = match take_lock(&config, &paths) {
        Ok(l) => l,
        Err((code, message)) => {
            output::error(&message);
            return code;
        }
    };
    init_tracing(true);
    daemon::run(daemon::Launch {
        config,
        paths,
        lock,
        reaper,
        reporter: Reporter::Terminal,
        started_at: SystemTime::now(),
    })
}

/// Takes the instance lock and writes our description into it.
pub fn take_lock(
    config: &Config,
    paths: &Paths,
) -> Result<paddock_sys::lock::HeldLock, (i32, String)> {
    let held = paddock_sys::lock::try_acquire(&paths.lock, Duration::from_millis(300))
        .map_err(|e| (exit::FAILURE, e.to_string()))?;
    let Some(mut lock) = held else {
        return Err((
            exit::ALREADY_RUNNING,
            super::start::already_running(config, paths),
        ));
    };
    let info = LockInfo::of_this_process(config, SystemTime::now());
    lock.write_info(&serde_json::to_string(&info).unwrap_or_default())
        .map_err(|e| (exit::FAILURE, e.to_string()))?;
    Ok(lock)
}

/// The daemon's own log goes to stderr: the terminal or journald with `run`, the
/// instance's daemon.log with `start` (stderr was redirected there). Level from
/// `PADDOCK_LOG` (default info).
pub fn init_tracing(ansi: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PADDOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi && output::stderr_is_tty())
        .with_writer(std::io::stderr)
        .try_init();
}
