//! Detaching from the terminal: `fork` then `setsid`.
//!
//! Invariant: [`fork_and_setsid`] is called only while the process has exactly one
//! thread — before any async runtime, logger thread or database handle exists. A fork
//! of a multi-threaded process copies locks held by threads that do not exist in the
//! child (seed 003); a fork after a GPU runtime started crashes the child (seed 000).
//! The function checks the thread count itself and refuses otherwise.

use std::os::fd::OwnedFd;

/// Which side of the fork this process is on.
#[derive(Debug)]
pub enum Side {
    /// The original process; `child` is the daemon's pid.
    Parent { child: i32 },
    /// The new process: a session leader with no controlling terminal.
    Child,
}

#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error("refusing to fork: this process has {0} threads (it must have exactly one)")]
    Threads(usize),
    #[error("fork failed: {0}")]
    Fork(nix::Error),
    #[error("setsid failed: {0}")]
    Setsid(nix::Error),
    #[error("could not redirect standard streams: {0}")]
    Redirect(nix::Error),
}

/// The number of threads of this process (from the process table; assumed 1
/// where it cannot be read).
pub fn thread_count() -> usize {
    crate::procs::thread_count(std::process::id() as i32).unwrap_or(1)
}

/// Forks; the child calls `setsid` and becomes a session leader.
pub fn fork_and_setsid() -> Result<Side, DetachError> {
    let threads = thread_count();
    if threads != 1 {
        return Err(DetachError::Threads(threads));
    }
    // SAFETY: the process has exactly one thread (checked above), so the child
    // inherits no lock held by another thread and may run any code afterwards.
    match unsafe { nix::unistd::fork() }.map_err(DetachError::Fork)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Side::Parent {
            child: child.as_raw(),
        }),
        nix::unistd::ForkResult::Child => {
            nix::unistd::setsid().map_err(DetachError::Setsid)?;
            Ok(Side::Child)
        }
    }
}

/// Points stdin at `/dev/null` and stdout and stderr at `log`, so that a panic or a
/// stray print of the daemon lands in its log instead of a terminal that went away.
pub fn redirect_stdio(devnull: &OwnedFd, log: &OwnedFd) -> Result<(), DetachError> {
    use std::os::fd::AsRawFd;
    for (from, to) in [(devnull, 0), (log, 1), (log, 2)] {
        // SAFETY: dup2 onto the standard descriptors 0..=2, which this process owns;
        // `from` is a valid open descriptor borrowed for the duration of the call.
        let rc = unsafe { libc::dup2(from.as_raw_fd(), to) };
        if rc < 0 {
            return Err(DetachError::Redirect(nix::Error::last()));
        }
    }
    Ok(())
}

/// Waits, at most `limit`, for the child `pid` of this process to exit, and reaps
/// it. Returns whether it is gone (a pid that is not our child counts as gone).
///
/// Neither side of a fork can hand the other a descriptor for its exit without a
/// thread of its own, so this polls `waitpid(WNOHANG)` after short, growing pauses.
pub fn wait_child(pid: i32, limit: std::time::Duration) -> bool {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = std::time::Instant::now() + limit;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) | Err(_) => return true,
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}
