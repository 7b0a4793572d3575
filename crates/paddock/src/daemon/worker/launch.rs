//! How the actor starts and controls its process, behind a trait: the daemon's
//! [`OsLauncher`] forks and execs on the spawner thread and signals real process
//! groups; the actor's unit tests use a fake child (`fake.rs`) that speaks the worker
//! protocol from a task, so that its decisions — deadline kills, crashes with a
//! request in flight, recycling, draining — are tested in milliseconds, with no
//! process and no Python.
//!
//! Invariants (of the OS side):
//! - every process is registered with the group registry (reaper and
//!   `groups.json`) as soon as it exists, and forgotten only once its whole group is
//!   gone;
//! - a group is signalled only through its `Proc`, which the actor drops when the
//!   process has been reaped: a kill cannot reach a recycled pid.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::process::{Command as StdCommand, ExitStatus};
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::process::Child;

use crate::daemon::logsink::Stream;
use crate::daemon::process_groups::Groups;
use crate::daemon::spawner::Spawner;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A process's output stream.
pub type Output = Box<dyn AsyncRead + Unpin + Send>;

/// Starts worker processes.
pub trait Launcher: Send + Sync {
    /// Starts `command` in its own process group, with `fd` (when given) as its
    /// descriptor 3. The caller keeps `fd` open until this returns.
    fn launch<'a>(
        &'a self,
        command: StdCommand,
        fd: Option<BorrowedFd<'a>>,
    ) -> BoxFuture<'a, io::Result<Box<dyn Proc>>>;
}

/// One started process, as its actor controls it.
pub trait Proc: Send {
    fn pid(&self) -> i32;
    /// Sends `signal` to the process's whole group.
    fn signal_group(&self, signal: i32);
    /// Completes when the process has exited (cancel-safe).
    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>>;
    /// Its stdout and stderr (once).
    fn take_output(&mut self) -> Vec<(Stream, Output)>;
    /// After the exit and a SIGKILL of the group: waits (at most `limit`) until
    /// nothing of the group is left, then forgets it; the pids that survived.
    fn reap_group(&mut self, limit: Duration) -> BoxFuture<'_, Vec<i32>>;
    /// Whether the kernel's OOM killer struck in the daemon's cgroup since this
    /// process was started.
    fn oom_killed(&self) -> bool;
}

/// Real processes: forked and exec'd on the spawner thread.
pub struct OsLauncher {
    pub spawner: Spawner,
    pub groups: Groups,
}

impl Launcher for OsLauncher {
    fn launch<'a>(
        &'a self,
        command: StdCommand,
        fd: Option<BorrowedFd<'a>>,
    ) -> BoxFuture<'a, io::Result<Box<dyn Proc>>> {
        Box::pin(async move {
            let oom_kills_at_spawn = paddock_sys::procs::cgroup_oom_kills();
            let inherit = fd.map(|fd| (fd.as_raw_fd(), paddock_protocol::WORKER_FD));
            let child = self.spawner.spawn_with_fd(command, inherit).await?;
            let pid = child.id().map(|p| p as i32).unwrap_or(0);
            self.groups.add(pid);
            Ok(Box::new(OsProc {
                child,
                pid,
                groups: self.groups.clone(),
                oom_kills_at_spawn,
            }) as Box<dyn Proc>)
        })
    }
}

struct OsProc {
    child: Child,
    pid: i32,
    groups: Groups,
    oom_kills_at_spawn: Option<u64>,
}

impl Proc for OsProc {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn signal_group(&self, signal: i32) {
        paddock_sys::signal::kill_group(self.pid, signal);
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>> {
        Box::pin(self.child.wait())
    }

    fn take_output(&mut self) -> Vec<(Stream, Output)> {
        let mut out: Vec<(Stream, Output)> = vec![];
        if let Some(o) = self.child.stdout.take() {
            out.push((Stream::Out, Box::new(o)));
        }
        if let Some(e) = self.child.stderr.take() {
            out.push((Stream::Err, Box::new(e)));
        }
        out
    }

    fn reap_group(&mut self, limit: Duration) -> BoxFuture<'_, Vec<i32>> {
        Box::pin(async move {
            let left = crate::daemon::process_groups::wait_gone(self.pid, limit).await;
            self.groups.remove(self.pid);
            left
        })
    }

    fn oom_killed(&self) -> bool {
        matches!(
            (self.oom_kills_at_spawn, paddock_sys::procs::cgroup_oom_kills()),
            (Some(a), Some(b)) if b > a
        )
    }
}
