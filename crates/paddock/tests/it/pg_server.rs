//! The PostgreSQL server the job-store tests share (see `PgServer`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The PostgreSQL server the job-store tests use: `PADDOCK_TEST_POSTGRES` when set
/// (a base URL without a database, e.g. `postgres://postgres@127.0.0.1:5432`), or
/// else a throwaway server that `.ci/postgres.sh` starts on a loopback port in a
/// temporary folder, stopped (and its folder removed) when this is dropped.
/// `PADDOCK_SKIP_POSTGRES=1` at build time marks those tests ignored instead.
#[derive(Debug)]
pub struct PgServer {
    pub base: String,
    /// The throwaway server's folder (None for an external server).
    dir: Option<PathBuf>,
}

impl PgServer {
    pub fn get() -> std::sync::Arc<PgServer> {
        if let Ok(base) = std::env::var("PADDOCK_TEST_POSTGRES") {
            return std::sync::Arc::new(PgServer { base, dir: None });
        }
        let script = format!("{}/../../.ci/postgres.sh", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "could not start a PostgreSQL server for the job-store tests ({script}): {stderr}\n\
             Install Debian's postgresql (apt-get install postgresql postgresql-client), \
             set PADDOCK_TEST_POSTGRES to a server's base URL, or build the tests with \
             PADDOCK_SKIP_POSTGRES=1 to skip them (reported as skipped)."
        );
        let base = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let dir = stderr
            .split_whitespace()
            .find(|w| w.starts_with("/tmp/paddock-pg."))
            .map(PathBuf::from);
        assert!(dir.is_some(), "no folder in {stderr:?}");
        std::sync::Arc::new(PgServer { base, dir })
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let Some(dir) = &self.dir else { return };
        // Debian's server programs, or (Homebrew) pg_ctl on the PATH.
        let pg_ctl = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).max())
            .map(|p| p.join("bin/pg_ctl"))
            .unwrap_or_else(|| PathBuf::from("pg_ctl"));
        {
            let data = dir.join("data");
            let mut c = if running_as_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
                c
            } else {
                Command::new(&pg_ctl)
            };
            let _ = c
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Whether this process runs as root (then the server runs as `postgres`).
fn running_as_root() -> bool {
    paddock_sys::current_uid() == 0
}
