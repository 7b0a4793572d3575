//! Process-wide settings the daemon changes for itself, and gives back to workers.
//!
//! - The descriptor limit: the daemon raises its soft `RLIMIT_NOFILE` to the hard
//!   limit, so that a flood of connections meets the gateway's own cap
//!   (`max_connections`) before the kernel's;
//! - the umask: the daemon creates every file 0600 and folder 0700 whatever umask
//!   it was started with (databases, their WAL, logs, sockets, locks).
//!
//! Workers get the values the daemon started with (see [`for_children`]): a model's
//! own files and limits are the user's business, not paddock's.

use std::sync::OnceLock;

pub use libc::{EMFILE, ENFILE};

/// What the daemon started with, for its children.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inherited {
    /// The soft RLIMIT_NOFILE before it was raised.
    pub nofile_soft: Option<u64>,
    /// The umask before it was narrowed.
    pub umask: Option<u32>,
}

static ORIGINAL_NOFILE: OnceLock<u64> = OnceLock::new();
static ORIGINAL_UMASK: OnceLock<u32> = OnceLock::new();

/// Raises the soft descriptor limit to the hard one; returns (soft, hard) now.
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    let _ = ORIGINAL_NOFILE.set(soft);
    // macOS refuses values above OPEN_MAX even when the hard limit is "infinity".
    let target = if cfg!(target_os = "macos") {
        hard.min(10240)
    } else {
        hard
    };
    if target > soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(std::io::Error::from)?;
    }
    Ok((target.max(soft), hard))
}

/// The soft descriptor limit in force now.
pub fn nofile_soft() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(s, _)| s)
        .unwrap_or(1024)
}

/// Sets the umask to 077 (files 0600, folders 0700), remembering the old one.
pub fn private_umask() {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let _ = ORIGINAL_UMASK.set(old.bits() as u32);
}

/// The settings a child should be given back before it runs its program.
pub fn for_children() -> Inherited {
    Inherited {
        nofile_soft: ORIGINAL_NOFILE.get().copied(),
        umask: ORIGINAL_UMASK.get().copied(),
    }
}
