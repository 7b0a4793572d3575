//! The instance lock: an `flock` held on `<state_dir>/<name>-<port>/lock` for the
//! daemon's whole life.
//!
//! Invariant: "running" means "this lock is held", never "a pid file exists" or
//! "kill(pid, 0) succeeded" (seed 004). The kernel releases the lock when the daemon
//! dies, however it dies, so a stale lock cannot exist.
//!
//! Probing from a client takes a shared lock for an instant; a daemon that finds the
//! lock busy therefore retries for a short window before concluding that another
//! daemon holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// A held exclusive lock; dropping it (or the process dying) releases it.
#[derive(Debug)]
pub struct HeldLock {
    file: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("could not open lock file {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("could not lock {path}: {source}")]
    Lock { path: String, source: nix::Error },
    #[error("could not write lock file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

fn open(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.display().to_string(),
            source,
        })
}

/// Takes the exclusive lock, or returns `Ok(None)` when another process holds it.
/// Retries for `patience` to ride out a client's momentary shared probe.
pub fn try_acquire(path: &Path, patience: Duration) -> Result<Option<HeldLock>, LockError> {
    let deadline = Instant::now() + patience;
    let mut file = open(path)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => return Ok(Some(HeldLock { file })),
            Err((f, nix::Error::EWOULDBLOCK)) => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                file = f;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, source)) => {
                return Err(LockError::Lock {
                    path: path.display().to_string(),
                    source,
                });
            }
        }
    }
}

impl HeldLock {
    /// Whether the file this lock is held on is still the one at `path` (not
    /// deleted or replaced): otherwise nobody can see that the instance runs.
    pub fn is_at(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let f: &File = &self.file;
        match (f.metadata(), std::fs::metadata(path)) {
            (Ok(held), Ok(there)) => held.dev() == there.dev() && held.ino() == there.ino(),
            _ => false,
        }
    }

    /// Replaces the lock file's contents (the holder's description).
    pub fn write_info(&mut self, contents: &str) -> Result<(), LockError> {
        let f: &mut File = &mut self.file;
        let r = (|| {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(contents.as_bytes())?;
            f.sync_data()
        })();
        r.map_err(|source| LockError::Write {
            path: "lock".into(),
            source,
        })
    }
}

/// Whether some process holds the lock at `path` (a missing file means no).
pub fn is_held(path: &Path) -> Result<bool, LockError> {
    if !path.exists() {
        return Ok(false);
    }
    let file = open(path)?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_probe) => Ok(false), // released when `_probe` drops
        Err((_, nix::Error::EWOULDBLOCK)) => Ok(true),
        Err((_, source)) => Err(LockError::Lock {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Blocks until nobody holds the lock at `path` or `timeout` passes; true when free.
/// Waits on the lock itself (in a helper thread), not by polling a pid.
pub fn wait_released(path: &Path, timeout: Duration) -> Result<bool, LockError> {
    let file = open(path)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = Flock::lock(file, FlockArg::LockShared)
            .map(drop)
            .map_err(|(_, e)| e);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(true),
        Ok(Err(source)) => Err(LockError::Lock {
            path: path.display().to_string(),
            source,
        }),
        Err(_) => Ok(false),
    }
}

/// Reads the lock file's contents (the holder's description), best effort.
pub fn read_info(path: &Path) -> Option<String> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    Some(s)
}
