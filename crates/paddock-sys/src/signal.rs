//! Signal names and process-group delivery.

/// The conventional name of a signal number ("SIGSEGV"), or "signal N".
pub fn name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("signal {sig}"),
    }
}

/// Sends `sig` to every process of group `pgid`; false when the group is gone.
pub fn kill_group(pgid: i32, sig: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    let Ok(s) = nix::sys::signal::Signal::try_from(sig) else {
        return false;
    };
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), s).is_ok()
}

/// Sends `sig` to one process; false when it is gone.
pub fn kill_pid(pid: i32, sig: i32) -> bool {
    if pid <= 1 {
        return false;
    }
    let Ok(s) = nix::sys::signal::Signal::try_from(sig) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s).is_ok()
}

/// Whether any process of group `pgid` is still alive.
pub fn group_alive(pgid: i32) -> bool {
    pgid > 1 && nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
}

pub const SIGTERM: i32 = libc::SIGTERM;
pub const SIGKILL: i32 = libc::SIGKILL;
/// Pauses a process (it cannot be caught): how tests stand for a frozen machine.
pub const SIGSTOP: i32 = libc::SIGSTOP;
pub const SIGCONT: i32 = libc::SIGCONT;

/// Restores the default action of SIGPIPE (end the process), which Rust's runtime
/// sets to "ignore": a command whose output goes into a closed pipe then ends
/// quietly, as `cat` does, instead of panicking on the write's error. For
/// commands that only print, never for the daemon.
pub fn die_on_broken_pipe() {
    // SAFETY: installing SIG_DFL runs no handler code; called from the main thread
    // of a short-lived CLI command before it starts any thread.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
}
