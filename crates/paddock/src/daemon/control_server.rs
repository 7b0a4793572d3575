//! The control socket: a Unix socket (mode 0600, in a 0700 folder) on which the CLI
//! asks for status or a stop. Only the daemon's own user may connect: the peer's uid
//! is checked on every connection.

use std::os::unix::fs::PermissionsExt;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::handles::SharedRef;
use crate::control::{Reply, Request};
use tokio::io::AsyncReadExt as _;

mod handlers;

/// Binds the socket, replacing a stale file (we hold the instance lock, so any
/// file there belongs to a dead daemon).
pub fn bind(path: &std::path::Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, shared: SharedRef) {
    let uid = paddock_sys::current_uid();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors (a flooded gateway, say): retrying at once would
                // spin; a connection closing elsewhere frees one soon.
                tracing::warn!("control socket: cannot accept a connection: {e}; pausing 100ms");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(c) if c.uid() == uid => {}
            other => {
                tracing::warn!(
                    "control socket: refused a connection from {:?}",
                    other.map(|c| c.uid())
                );
                continue;
            }
        }
        tokio::spawn(handle(stream, shared.clone()));
    }
}

async fn handle(stream: UnixStream, shared: SharedRef) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut r = BufReader::new(r.take(64 * 1024));
    if r.read_line(&mut line).await.is_err() {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Status) => handlers::status(&shared),
        Ok(Request::Stop) => handlers::stop(&shared),
        Ok(Request::Reload) => handlers::reload(&shared).await,
        Ok(Request::Jobs(req)) => handlers::jobs(&shared, req).await,
        Err(e) => Reply::Error {
            error: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let _ = w.write_all(&out).await;
}
