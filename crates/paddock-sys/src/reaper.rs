//! The reaper: a small process, forked from the daemon while it is still
//! single-threaded, that kills every worker process group the moment the daemon dies.
//!
//! Why: `PR_SET_PDEATHSIG` reaches only a worker's first process, not the children it
//! started, and does not exist on macOS. The reaper reads a pipe whose only writer is
//! the daemon. The kernel closes that pipe when the daemon dies — SIGKILL, OOM, panic
//! or a clean exit alike — and on end-of-file the reaper sends SIGKILL to every
//! process group it was told about and exits. It holds no lock, no socket and no file
//! of the daemon's, so it can never keep an instance "running".
//!
//! Messages are lines: `+PGID` (a group was started) and `-PGID` (it is gone). Each
//! is one `write` of fewer than `PIPE_BUF` bytes, so lines from several writers never
//! interleave.
//!
//! Who writes `+PGID`: the worker itself, between its fork and its exec (see
//! `spawn.rs`), on the copy of the pipe it inherited — so a group is known to the
//! reaper before its program runs, even when the daemon is killed right after the
//! fork. The daemon writes `+PGID` again once the spawn returned (a no-op then) and
//! `-PGID` when the group is gone.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::signal::{SigHandler, Signal, signal};

/// The daemon's end of the reaper pipe.
#[derive(Debug)]
pub struct Reaper {
    pipe: File,
    pid: i32,
}

impl Reaper {
    /// Tells the reaper a process group now exists.
    pub fn watch(&mut self, pgid: i32) {
        let _ = self.pipe.write_all(format!("+{pgid}\n").as_bytes());
    }
    /// Tells the reaper a process group is gone.
    pub fn forget(&mut self, pgid: i32) {
        let _ = self.pipe.write_all(format!("-{pgid}\n").as_bytes());
    }
    /// The pipe's write end, for a worker to announce its own group between fork
    /// and exec (`spawn::Supervision::reaper_fd`). Valid while this `Reaper` lives;
    /// close-on-exec, so no program a worker runs keeps it.
    pub fn write_fd(&self) -> RawFd {
        self.pipe.as_raw_fd()
    }
    /// The reaper's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// Forks the reaper. Must be called while single-threaded; `close_in_child` are
/// descriptors the reaper must not keep open (a progress pipe, for instance).
pub fn fork_reaper(close_in_child: &[RawFd]) -> Result<Reaper, crate::detach::DetachError> {
    let threads = crate::detach::thread_count();
    if threads != 1 {
        return Err(crate::detach::DetachError::Threads(threads));
    }
    let (read_end, write_end) = nix::unistd::pipe().map_err(crate::detach::DetachError::Fork)?;
    // The daemon's write end must not leak into workers: mark it close-on-exec.
    set_cloexec(&write_end);
    set_cloexec(&read_end);
    // SAFETY: single-threaded (checked above), so the child may run ordinary code.
    match unsafe { nix::unistd::fork() }.map_err(crate::detach::DetachError::Fork)? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(read_end);
            Ok(Reaper {
                pipe: File::from(write_end),
                pid: child.as_raw(),
            })
        }
        nix::unistd::ForkResult::Child => {
            drop(write_end);
            for &fd in close_in_child {
                let _ = nix::unistd::close(fd);
            }
            reaper_main(read_end)
        }
    }
}

fn set_cloexec(fd: &OwnedFd) {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

fn reaper_main(pipe: OwnedFd) -> ! {
    // Terminal signals are for the daemon; the reaper lives until the pipe closes.
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: installing SIG_IGN runs no handler code.
        unsafe {
            let _ = signal(sig, SigHandler::SigIgn);
        }
    }
    let _ = pipe.as_raw_fd();
    let mut groups: BTreeSet<i32> = BTreeSet::new();
    let reader = BufReader::new(File::from(pipe));
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let (op, n) = line.split_at(line.len().min(1));
        let Ok(pgid) = n.trim().parse::<i32>() else {
            continue;
        };
        if pgid <= 1 {
            continue;
        }
        match op {
            "+" => {
                groups.insert(pgid);
            }
            "-" => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    // End of file: the daemon is gone. Nothing it started may outlive it.
    for pgid in groups {
        crate::signal::kill_group(pgid, libc::SIGKILL);
    }
    std::process::exit(0)
}
