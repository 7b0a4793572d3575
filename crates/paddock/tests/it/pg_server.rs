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
    /// Its options beyond `.ci/postgres.sh`'s own (`PG_OPTIONS`).
    options: String,
}

impl PgServer {
    pub fn get() -> std::sync::Arc<PgServer> {
        if let Ok(base) = std::env::var("PADDOCK_TEST_POSTGRES") {
            return std::sync::Arc::new(PgServer {
                base,
                dir: None,
                options: String::new(),
            });
        }
        std::sync::Arc::new(PgServer::start(""))
    }

    /// A server of the test's own, never the shared one, started with `options`
    /// ("-c max_connections=20"): for a test that restarts or limits it.
    pub fn own(options: &str) -> PgServer {
        PgServer::start(options)
    }

    fn start(options: &str) -> PgServer {
        let script = format!("{}/../../.ci/postgres.sh", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(&script)
            .env("PG_OPTIONS", options)
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
        PgServer {
            base,
            dir,
            options: options.to_string(),
        }
    }

    /// A fresh database on this server: its URL.
    pub fn database(&self) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let db = format!("t{}_{nanos}", std::process::id());
        let out = Command::new("psql")
            .arg(format!("{}/postgres", self.base))
            .args(["-c", &format!("CREATE DATABASE {db}")])
            .output()
            .expect("psql");
        crate::harness::assert_ran(&out);
        format!("{}/{db}", self.base)
    }

    /// Runs `pg_ctl ACTION` on this (own) server, waiting for it to finish:
    /// `restart -m fast`, `stop -m fast`, `start` (with the server's options).
    pub fn ctl(&self, action: &[&str]) {
        let dir = self.dir.as_ref().expect("a server of the test's own");
        let port = self.base.rsplit(':').next().unwrap();
        let mut c = pg_ctl_command();
        c.arg("-D").arg(dir.join("data")).arg("-w").args(action);
        if action[0] != "stop" {
            // The server's output goes to its log: a server that inherited our
            // pipes would hold them open after pg_ctl returned.
            c.arg("-l").arg(dir.join("log"));
        }
        if action[0] == "start" {
            c.arg("-o").arg(format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=300 {}",
                dir.display(),
                self.options
            ));
        }
        let status = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl");
        assert!(status.success(), "pg_ctl {action:?}: {status}");
    }
}

/// `pg_ctl`: Debian's server programs, or (Homebrew) the one on the PATH; as the
/// `postgres` user when the tests run as root.
fn pg_ctl_command() -> Command {
    let pg_ctl = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).max())
        .map(|p| p.join("bin/pg_ctl"))
        .unwrap_or_else(|| PathBuf::from("pg_ctl"));
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
        c
    } else {
        Command::new(&pg_ctl)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let Some(dir) = &self.dir else { return };
        let _ = pg_ctl_command()
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Whether this process runs as root (then the server runs as `postgres`).
fn running_as_root() -> bool {
    paddock_sys::current_uid() == 0
}
