//! The spawner thread: the one thread that forks worker processes.
//!
//! Why a dedicated thread: Linux delivers `PR_SET_PDEATHSIG` when the *thread* that
//! forked the child exits, not the process. Tokio's blocking pool retires idle
//! threads, which would kill healthy workers. This thread lives as long as the daemon.
//!
//! Invariant: every worker is spawned here, by fork+exec of a fresh program (never a
//! fork of the daemon that goes on running daemon code), in its own process group,
//! which the child announces to the reaper before it execs
//! (`paddock_sys::spawn::supervise`).
//!
//! Test-only switches, read once at start (never set them in production):
//! `PADDOCK_TEST_NO_PDEATHSIG=1` spawns without Linux's parent-death signal, so the
//! orphan tests show the reaper alone suffices (as on macOS);
//! `PADDOCK_TEST_HANG_AFTER_SPAWN=FILE` makes this thread write the new child's pid
//! to FILE and then stop for good, before the daemon has told the reaper anything:
//! a test then kills the daemon in that window.

use std::process::Command as StdCommand;
use std::sync::mpsc;

use tokio::process::Child;
use tokio::sync::oneshot;

struct Request {
    command: StdCommand,
    inherit: Option<(std::os::fd::RawFd, std::os::fd::RawFd)>,
    /// Announce the child's group to the reaper (workers: their groups are
    /// forgotten again when they end). Not for health probes, whose groups nobody
    /// would forget: the reaper would keep their numbers, which the system reuses.
    announce: bool,
    reply: oneshot::Sender<std::io::Result<Child>>,
}

/// A handle to the spawner thread; cheap to clone.
#[derive(Clone)]
pub struct Spawner {
    tx: mpsc::Sender<Request>,
}

impl Spawner {
    /// Starts the thread; it enters `runtime` so that tokio reaps the children.
    /// `reaper_fd`: the reaper's pipe, which each child announces its group on.
    pub fn start(
        runtime: tokio::runtime::Handle,
        reaper_fd: Option<std::os::fd::RawFd>,
    ) -> std::io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Request>();
        let how = paddock_sys::spawn::Supervision {
            daemon_pid: std::process::id() as i32,
            reaper_fd,
            parent_death_signal: std::env::var_os("PADDOCK_TEST_NO_PDEATHSIG").is_none(),
        };
        let hang_after_spawn = std::env::var_os("PADDOCK_TEST_HANG_AFTER_SPAWN");
        std::thread::Builder::new()
            .name("paddock-spawner".into())
            .spawn(move || {
                let _guard = runtime.enter();
                for mut req in rx {
                    let how = paddock_sys::spawn::Supervision {
                        reaper_fd: how.reaper_fd.filter(|_| req.announce),
                        ..how
                    };
                    paddock_sys::spawn::supervise(&mut req.command, how, req.inherit);
                    let mut cmd = tokio::process::Command::from(req.command);
                    cmd.kill_on_drop(false);
                    let child = cmd.spawn();
                    if let (Some(file), Ok(c)) = (&hang_after_spawn, &child) {
                        let _ = std::fs::write(file, c.id().unwrap_or(0).to_string());
                        // The window under test: forked, not yet known to the daemon.
                        loop {
                            std::thread::park();
                        }
                    }
                    let _ = req.reply.send(child);
                }
                // The channel closes only when the daemon is exiting.
            })?;
        Ok(Spawner { tx })
    }

    /// Spawns `command` (a health probe) in its own process group, with the
    /// parent-death signal, not announced to the reaper; returns its handle.
    pub async fn spawn(&self, command: StdCommand) -> std::io::Result<Child> {
        self.request(command, None, false).await
    }

    /// Spawns a worker: like [`Spawner::spawn`], but the child announces its group
    /// to the reaper before it execs, and gets `fd` as descriptor `target` (the
    /// caller keeps `fd` open until this returns).
    pub async fn spawn_with_fd(
        &self,
        command: StdCommand,
        inherit: Option<(std::os::fd::RawFd, std::os::fd::RawFd)>,
    ) -> std::io::Result<Child> {
        self.request(command, inherit, true).await
    }

    async fn request(
        &self,
        command: StdCommand,
        inherit: Option<(std::os::fd::RawFd, std::os::fd::RawFd)>,
        announce: bool,
    ) -> std::io::Result<Child> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                command,
                inherit,
                announce,
                reply,
            })
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        rx.await
            .map_err(|_| std::io::Error::other("the spawner thread dropped the request"))?
    }
}
