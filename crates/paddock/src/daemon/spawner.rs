//! The spawner thread: the one thread that forks worker processes.
//!
//! Why a dedicated thread: Linux delivers `PR_SET_PDEATHSIG` when the *thread* that
//! forked the child exits, not the process. Tokio's blocking pool retires idle
//! threads, which would kill healthy workers. This thread lives as long as the daemon.
//!
//! Invariant: every worker is spawned here, by fork+exec of a fresh program (never a
//! fork of the daemon that goes on running daemon code), in its own process group.

use std::process::Command as StdCommand;
use std::sync::mpsc;

use tokio::process::Child;
use tokio::sync::oneshot;

struct Request {
    command: StdCommand,
    inherit: Option<(std::os::fd::RawFd, std::os::fd::RawFd)>,
    reply: oneshot::Sender<std::io::Result<Child>>,
}

/// A handle to the spawner thread; cheap to clone.
#[derive(Clone)]
pub struct Spawner {
    tx: mpsc::Sender<Request>,
}

impl Spawner {
    /// Starts the thread; it enters `runtime` so that tokio reaps the children.
    pub fn start(runtime: tokio::runtime::Handle) -> std::io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Request>();
        let daemon_pid = std::process::id() as i32;
        std::thread::Builder::new()
            .name("paddock-spawner".into())
            .spawn(move || {
                let _guard = runtime.enter();
                for mut req in rx {
                    paddock_sys::spawn::supervise(&mut req.command, daemon_pid, req.inherit);
                    let mut cmd = tokio::process::Command::from(req.command);
                    cmd.kill_on_drop(false);
                    let _ = req.reply.send(cmd.spawn());
                }
                // The channel closes only when the daemon is exiting.
            })?;
        Ok(Spawner { tx })
    }

    /// Spawns `command` as a supervised worker (own process group, parent-death
    /// signal) and returns its handle.
    pub async fn spawn(&self, command: StdCommand) -> std::io::Result<Child> {
        self.spawn_with_fd(command, None).await
    }

    /// Like [`Spawner::spawn`], handing the child `fd` as descriptor `target`. The
    /// caller keeps `fd` open until this returns.
    pub async fn spawn_with_fd(
        &self,
        command: StdCommand,
        inherit: Option<(std::os::fd::RawFd, std::os::fd::RawFd)>,
    ) -> std::io::Result<Child> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                command,
                inherit,
                reply,
            })
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        rx.await
            .map_err(|_| std::io::Error::other("the spawner thread dropped the request"))?
    }
}
