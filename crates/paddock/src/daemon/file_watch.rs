//! Watching the instance's own files while the daemon runs.
//!
//! Why: clients find a daemon through files — the lock (held means running), the
//! control socket, the job database. An operator who deletes the state folder
//! (`rm -rf ~/.local/state/paddock`) while it runs would leave a daemon nobody can
//! see: `status` and `stop` say "not running", a new `start` fails on the port, and
//! job enqueues are answered 202 into a deleted database.
//!
//! Invariants, checked once a second:
//! - the lock file at its path is one this daemon holds: if it was deleted or
//!   replaced, the folder, a new lock (held, with our description) and the control
//!   socket are recreated, so `status`, `stop` and `start` ("already running") see
//!   this daemon again;
//! - a SQLite job database that vanished from its path is never written to as if
//!   nothing happened: enqueues are refused (503) with the reason, and it is logged.

use paddock_sys::lock::HeldLock;

use super::handles::SharedRef;
use crate::instance::LockInfo;

/// One check; `relocked` holds the locks taken on recreated lock files.
pub fn check(shared: &SharedRef, lock: &HeldLock, relocked: &mut Vec<HeldLock>) {
    let paths = &shared.paths;
    let held = relocked.last().unwrap_or(lock);
    if !held.is_at(&paths.lock) {
        restore(shared, relocked);
    }
    if let Some(db) = sqlite_path(shared)
        && !db.exists()
        && shared.jobs_lost.borrow().is_none()
    {
        let reason = format!(
            "the job database {} was deleted while the daemon ran: new jobs could not be kept; restart the instance (paddock stop, then start) to create a new one",
            db.display()
        );
        tracing::error!("{reason}");
        shared.jobs_lost.send_replace(Some(reason));
    }
}

/// The SQLite job database's path, when this instance has one.
fn sqlite_path(shared: &SharedRef) -> Option<std::path::PathBuf> {
    shared.jobs.as_ref()?;
    match &shared.config.instance.store {
        crate::config::Store::Sqlite(p) => Some(
            p.clone()
                .unwrap_or_else(|| shared.paths.dir.join("jobs.db")),
        ),
        crate::config::Store::Postgres(_) => None,
    }
}

/// Recreates the folder, the lock and the control socket.
fn restore(shared: &SharedRef, relocked: &mut Vec<HeldLock>) {
    let paths = &shared.paths;
    tracing::error!(
        "the instance's lock {} was deleted or replaced while the daemon ran: recreating it and the control socket so that status and stop still find this daemon",
        paths.lock.display()
    );
    if let Err(e) = paths.create() {
        tracing::error!("cannot recreate {}: {e}", paths.dir.display());
        return;
    }
    match paddock_sys::lock::try_acquire(&paths.lock, std::time::Duration::ZERO) {
        Ok(Some(mut l)) => {
            let info = LockInfo::of_this_process(&shared.config, shared.started_at);
            if let Err(e) = l.write_info(&serde_json::to_string(&info).unwrap_or_default()) {
                tracing::error!("cannot describe this daemon in the new lock: {e}");
            }
            relocked.push(l);
        }
        Ok(None) => {
            // Another process took the new file first (a `start` racing us): it
            // will fail on the gateway's port, which this daemon still holds.
            tracing::error!(
                "another process holds the new lock {}; this daemon (pid {}) keeps running",
                paths.lock.display(),
                shared.pid
            );
            return;
        }
        Err(e) => {
            tracing::error!("cannot recreate the lock: {e}");
            return;
        }
    }
    match super::control_server::bind(&paths.socket) {
        Ok(listener) => {
            tokio::spawn(super::control_server::serve(listener, shared.clone()));
        }
        Err(e) => tracing::error!(
            "cannot recreate the control socket {}: {e}",
            paths.socket.display()
        ),
    }
}
