//! What a worker process does between `fork` and `exec`.
//!
//! Invariant: only async-signal-safe system calls run in the child before `exec`
//! (`getpid`, `write`, `sigaction`, `prctl`, `getppid`, `umask`, `setrlimit`,
//! `_exit`): the daemon is multi-threaded by then, and anything that takes a lock
//! (the allocator, stdio) could deadlock the child (seed 003).
//!
//! The process group comes from `CommandExt::process_group(0)` (set by std in the
//! child before our code runs), so a stop or a deadline kill reaches everything the
//! worker started.
//!
//! No orphan, on any platform: the first thing the child does is announce its
//! group to the reaper (`+PGID` on the reaper's pipe, inherited from the daemon).
//! The daemon can die at any moment after the fork — before it learned the pid,
//! before it told the reaper — and the reaper still knows the group, because the
//! child told it before it could run anything. Linux's `PR_SET_PDEATHSIG` is kept as
//! a second line (it also covers a reaper that died), but nothing relies on it.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// How a worker is tied to its daemon.
#[derive(Debug, Clone, Copy)]
pub struct Supervision {
    /// The daemon's pid.
    pub daemon_pid: i32,
    /// The reaper's pipe (`Reaper::write_fd`): the child announces its group there
    /// before it execs.
    pub reaper_fd: Option<RawFd>,
    /// Linux: SIGKILL when the thread that forked the child exits. On by default;
    /// off only to test that the reaper alone leaves no orphan (as on macOS).
    pub parent_death_signal: bool,
}

/// `+PGID\n` for `pid`, in `buf`, without allocating; the bytes written.
fn announcement(pid: i32, buf: &mut [u8; 16]) -> usize {
    let mut digits = [0u8; 12];
    let (mut n, mut len) = (pid.unsigned_abs(), 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf[0] = b'+';
    for i in 0..len {
        buf[1 + i] = digits[len - 1 - i];
    }
    buf[1 + len] = b'\n';
    len + 2
}

/// Prepares `cmd` to run as a supervised worker: its own process group, announced
/// to the reaper before it execs, and (Linux) SIGKILL when the thread that forked it
/// exits. Call it on the dedicated spawner thread, which lives as long as the
/// daemon, because Linux delivers the parent-death signal when the *forking thread*
/// exits.
///
/// `inherit`: a descriptor the child gets as descriptor `target` (close-on-exec
/// cleared), for the worker protocol's socket.
pub fn supervise(cmd: &mut Command, how: Supervision, inherit: Option<(RawFd, RawFd)>) {
    let Supervision {
        daemon_pid,
        reaper_fd,
        parent_death_signal,
    } = how;
    cmd.process_group(0);
    // Read before the fork: the child only copies these numbers.
    let given_back = crate::limits::for_children();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (getpid, sigaction, write, prctl, getppid, dup2,
    // fcntl, umask, getrlimit, setrlimit, _exit); it allocates nothing and touches no
    // lock.
    unsafe {
        cmd.pre_exec(move || {
            // First: our group (std made it before this runs) is the reaper's to
            // kill from now on, whatever happens to the daemon.
            if let Some(fd) = reaper_fd {
                let mut line = [0u8; 16];
                let len = announcement(libc::getpid(), &mut line);
                // A dead reaper must not kill us with SIGPIPE (std set it to the
                // default just before): ignore it around the write.
                let mut ignore: libc::sigaction = std::mem::zeroed();
                ignore.sa_sigaction = libc::SIG_IGN;
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(libc::SIGPIPE, &ignore, &mut old);
                libc::write(fd, line.as_ptr().cast(), len);
                libc::sigaction(libc::SIGPIPE, &old, std::ptr::null_mut());
            }
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
            if parent_death_signal {
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
            let _ = (daemon_pid, parent_death_signal);
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

#[cfg(test)]
mod tests {
    use super::announcement;

    #[test]
    fn announcements_are_reaper_lines() {
        for pid in [1, 9, 10, 4242, 4_194_304, i32::MAX] {
            let mut buf = [0u8; 16];
            let len = announcement(pid, &mut buf);
            assert_eq!(&buf[..len], format!("+{pid}\n").as_bytes());
        }
    }
}
