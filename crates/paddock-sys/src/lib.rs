//! The one home for paddock's unsafe and operating-system code.
//!
//! Every `unsafe` block in paddock lives in this crate and carries a `// SAFETY:`
//! comment. The rest of the workspace is `#![forbid(unsafe_code)]` and reaches the
//! operating system through the small, named operations exported here:
//!
//! - [`detach`]: fork and `setsid` while the process is single-threaded;
//! - [`reaper`]: a tiny forked process that kills every worker process group the
//!   moment its daemon dies, whatever killed the daemon;
//! - [`gpu`]: NVIDIA GPUs through NVML, loaded at run time (no driver: said so);
//! - [`limits`]: the descriptor limit and umask the daemon sets for itself;
//! - [`lock`]: the instance lock (`flock`), the only meaning of "running";
//! - [`spawn`]: what a worker process does between `fork` and `exec` (async-signal-safe
//!   only: a process group, the parent-death signal);
//! - [`signal`]: signal names and process-group kills;
//! - [`procs`]: who listens on a port, which processes form a tree, start times,
//!   memory and threads (Linux: /proc; macOS: libproc and sysctl).

#![deny(unsafe_op_in_unsafe_fn)]

pub mod detach;
pub mod gpu;
pub mod limits;
pub mod lock;
pub mod procs;
pub mod reaper;
pub mod signal;
pub mod spawn;

/// The number of CPU cores this process may use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The effective user id of this process.
pub fn current_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// This machine's name (None when it has none).
pub fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
}

/// Fills `buf` from the kernel's random source (`/dev/urandom`, on Linux and
/// macOS alike): for secrets such as an instance's operator token.
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Whether `fd` has bytes (or an end of file) waiting to be read at this moment,
/// asked of the kernel directly (`poll` with a zero timeout), not of an event loop
/// that may not have heard yet.
pub fn readable_now(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn random_bytes_differ() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        super::random_bytes(&mut a).unwrap();
        super::random_bytes(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn readable_now_sees_bytes_in_the_socket() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!super::readable_now(b.as_fd()));
        a.write_all(b"x").unwrap();
        assert!(super::readable_now(b.as_fd()));
    }
}
