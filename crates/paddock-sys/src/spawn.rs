//! What a worker process does between `fork` and `exec`.
//!
//! Invariant: only async-signal-safe system calls run in the child before `exec`
//! (`prctl`, `getppid`, `umask`, `setrlimit`, `_exit`): the daemon is multi-threaded by then, and anything
//! that takes a lock (the allocator, stdio) could deadlock the child (seed 003).
//!
//! The process group comes from `CommandExt::process_group(0)` (set by std in the
//! child), so a stop or a deadline kill reaches everything the worker started.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Prepares `cmd` to run as a supervised worker of the daemon `daemon_pid`: its own
/// process group, and (Linux) SIGKILL when the thread that forked it exits. Call it on
/// the dedicated spawner thread, which lives as long as the daemon, because Linux
/// delivers the parent-death signal when the *forking thread* exits.
///
/// `inherit`: a descriptor the child gets as descriptor `target` (close-on-exec
/// cleared), for the worker protocol's socket.
pub fn supervise(cmd: &mut Command, daemon_pid: i32, inherit: Option<(RawFd, RawFd)>) {
    cmd.process_group(0);
    // Read before the fork: the child only copies these numbers.
    let given_back = crate::limits::for_children();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, dup2, fcntl, umask, getrlimit,
    // setrlimit, _exit); it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            // The worker gets the umask and descriptor limit the daemon was started
            // with, not the ones the daemon chose for itself.
            if let Some(mask) = given_back.umask {
                libc::umask(mask as libc::mode_t);
            }
            if let Some(soft) = given_back.nofile_soft {
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                    lim.rlim_cur = (soft as libc::rlim_t).min(lim.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                }
            }
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The daemon may have died before prctl took effect: then our parent
                // is no longer the daemon and nobody would ever stop us.
                if libc::getppid() != daemon_pid {
                    libc::_exit(111);
                }
            }
            #[cfg(not(target_os = "linux"))]
            let _ = daemon_pid;
            if let Some((fd, target)) = inherit {
                if fd == target {
                    // dup2 onto itself keeps close-on-exec: clear it by hand.
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
