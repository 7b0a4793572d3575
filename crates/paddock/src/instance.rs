//! Where an instance lives on disk, and what its lock file says.
//!
//! An instance is a config's name plus its gateway port: `<state_dir>/<name>-<port>/`
//! holds the lock, the logs and the record of worker process groups. Two instances of
//! one config on two ports share nothing (seed 004). The control socket sits in the
//! same folder unless that path is too long for a Unix socket, in which case it goes
//! to `$XDG_RUNTIME_DIR/paddock/` (or `/tmp/paddock-<uid>/`), in a 0700 folder.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Why the state folder cannot be used, in words (a file in the way, no right to
/// create a folder).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

/// The paths of one instance.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
    pub lock: PathBuf,
    pub socket: PathBuf,
    pub daemon_log: PathBuf,
    pub logs: PathBuf,
    /// Worker process groups of the running daemon, for cleanup after a SIGKILL.
    pub groups: PathBuf,
    /// The operator token (0600): what opens `/admin/*` when no `auth_token` is set.
    pub token: PathBuf,
}

/// Longest socket path we use (the kernel's limit is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 100;

impl Paths {
    pub fn of(config: &Config) -> Paths {
        let i = &config.instance;
        let id = format!("{}-{}", i.name, i.listen.port());
        let dir = i.state_dir.join(&id);
        let near = dir.join("ctl.sock");
        let socket = if near.as_os_str().len() <= MAX_SOCKET_PATH {
            near
        } else {
            runtime_dir().join(format!(
                "{id}-{:08x}.sock",
                fnv(dir.as_os_str().as_encoded_bytes())
            ))
        };
        Paths {
            lock: dir.join("lock"),
            daemon_log: dir.join("daemon.log"),
            logs: dir.join("logs"),
            groups: dir.join("groups.json"),
            token: dir.join("token"),
            socket,
            dir,
        }
    }

    /// Whether [`Paths::create`] can work, without creating anything that is not
    /// there: the instance's folder, or its nearest existing ancestor, must be a
    /// folder this user can create entries in (proved by making and removing one,
    /// which also catches a read-only file system and root's blind spots).
    pub fn probe(&self) -> Result<(), Unusable> {
        let mut at = self.dir.as_path();
        loop {
            match std::fs::metadata(at) {
                Ok(m) if m.is_dir() => break,
                Ok(_) => {
                    return Err(Unusable(format!(
                        "{} is a file, not a folder",
                        at.display()
                    )));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    match at.parent() {
                        Some(p) => at = p,
                        None => {
                            return Err(Unusable(format!("{} does not exist", self.dir.display())));
                        }
                    }
                }
                Err(e) => return Err(Unusable(format!("cannot read {}: {e}", at.display()))),
            }
        }
        let trial = at.join(format!(".paddock-check-{}", std::process::id()));
        std::fs::create_dir(&trial)
            .and_then(|()| std::fs::remove_dir(&trial))
            .map_err(|e| Unusable(format!("cannot create a folder in {}: {e}", at.display())))
    }

    /// The operator token: read from its file, or made (32 random bytes, as hex)
    /// and written 0600 the first time. It stays the same across restarts, so a
    /// dashboard tab or a script keeps working.
    pub fn operator_token(&self) -> std::io::Result<String> {
        match std::fs::read_to_string(&self.token) {
            Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut raw = [0u8; 32];
        paddock_sys::random_bytes(&mut raw)?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = self.token.with_extension("tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            writeln!(f, "{token}")?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.token)?;
        Ok(token)
    }

    /// The operator token if the instance made one (None before its first start).
    pub fn read_operator_token(&self) -> Option<String> {
        std::fs::read_to_string(&self.token)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    /// Creates the instance's folders (mode 0700).
    pub fn create(&self) -> std::io::Result<()> {
        for d in [&self.dir, &self.logs] {
            mkdir_private(d)?;
        }
        if let Some(parent) = self.socket.parent() {
            mkdir_private(parent)?;
        }
        Ok(())
    }
}

fn mkdir_private(d: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)?;
    let mut p = std::fs::metadata(d)?.permissions();
    if p.mode() & 0o077 != 0 {
        p.set_mode(0o700);
        std::fs::set_permissions(d, p)?;
    }
    Ok(())
}

fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("paddock"),
        None => PathBuf::from(format!("/tmp/paddock-{}", paddock_sys::current_uid())),
    }
}

fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// What the lock file says about its holder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: i32,
    pub name: String,
    pub port: u16,
    pub version: String,
    pub started_at: String,
    pub started_unix_ms: u64,
    pub config: PathBuf,
}

impl LockInfo {
    /// This process's description, as the holder of `config`'s instance lock.
    pub fn of_this_process(
        config: &crate::config::Config,
        started: std::time::SystemTime,
    ) -> LockInfo {
        LockInfo {
            pid: std::process::id() as i32,
            name: config.instance.name.to_string(),
            port: config.instance.listen.port(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: crate::timefmt::rfc3339(started),
            started_unix_ms: started
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            config: config.path.clone(),
        }
    }

    /// The holder as one line: "pid 123, port 8700, started 2026-...".
    pub fn describe(&self) -> String {
        format!(
            "pid {}, port {}, started {} (paddock {})",
            self.pid, self.port, self.started_at, self.version
        )
    }

    /// Reads the holder's description, waiting briefly for a daemon that has just
    /// taken the lock to write it.
    pub fn read_settled(path: &Path) -> Option<LockInfo> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            if let Some(info) = paddock_sys::lock::read_info(path)
                .and_then(|s| serde_json::from_str::<LockInfo>(&s).ok())
            {
                return Some(info);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
