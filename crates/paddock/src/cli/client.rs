//! Talking to a running daemon over its control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::output;
use crate::config::Config;
use crate::control::{Reply, Request};
use crate::exit;
use crate::instance::{LockInfo, Paths};

/// Whether the instance is running (its lock is held).
pub fn running(paths: &Paths) -> bool {
    paddock_sys::lock::is_held(&paths.lock).unwrap_or(false)
}

/// How long a command waits for the daemon's answer, unless it says otherwise.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Asks the daemon `req` (`what` names it in messages) and hands back what `pick`
/// takes from its answer. Anything else is said on stderr, and its exit code is
/// the `Err`: the daemon's own error (1), an answer `pick` does not take (1), a
/// daemon gone meanwhile (4, "not running"), or one that does not answer (1).
pub fn ask<T>(
    config: &Config,
    req: &Request,
    what: &str,
    timeout: Duration,
    pick: impl FnOnce(Reply) -> Result<T, Reply>,
) -> Result<T, i32> {
    let paths = Paths::of(config);
    match request_with_timeout(&paths, req, timeout).map(pick) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(Reply::Error { error })) => {
            output::error(&error);
            Err(exit::FAILURE)
        }
        Ok(Err(other)) => {
            output::error(&format!("unexpected answer to {what}: {other:?}"));
            Err(exit::FAILURE)
        }
        Err(e) => {
            if !running(&paths) {
                output::error(&not_running_message(config));
                return Err(exit::NOT_RUNNING);
            }
            output::error(&e);
            Err(exit::FAILURE)
        }
    }
}

/// Sends one request and reads the reply.
pub fn request(paths: &Paths, req: &Request) -> Result<Reply, String> {
    request_with_timeout(paths, req, ANSWER_TIMEOUT)
}

/// Sends one request and reads the reply, waiting at most `timeout` for it.
pub fn request_with_timeout(
    paths: &Paths,
    req: &Request,
    timeout: Duration,
) -> Result<Reply, String> {
    let who = || {
        LockInfo::read_settled(&paths.lock)
            .map(|i| format!("the daemon ({})", i.describe()))
            .unwrap_or_else(|| "the daemon".into())
    };
    let mut s = UnixStream::connect(&paths.socket).map_err(|e| {
        format!(
            "{} holds the instance lock but its control socket {} does not answer: {e}",
            who(),
            paths.socket.display()
        )
    })?;
    let _ = s.set_read_timeout(Some(timeout));
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| format!("could not send to {}: {e}", paths.socket.display()))?;
    let mut reply = String::new();
    BufReader::new(s)
        .read_line(&mut reply)
        .map_err(|e| format!("no answer from {}: {e}", who()))?;
    serde_json::from_str(&reply).map_err(|e| format!("bad answer from {}: {e}", who()))
}

pub fn not_running_message(config: &Config) -> String {
    format!(
        "instance {} (port {}) is not running",
        config.instance.name,
        config.instance.listen.port()
    )
}
