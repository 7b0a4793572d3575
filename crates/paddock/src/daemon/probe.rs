//! Health probes: an HTTP GET that must answer 2xx, a TCP connect, or a program
//! that must exit 0 — each bounded by the service's `health_timeout`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Health;

/// Why a health probe failed, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProbeFailed(pub String);

impl From<String> for ProbeFailed {
    fn from(s: String) -> ProbeFailed {
        ProbeFailed(s)
    }
}

impl From<&str> for ProbeFailed {
    fn from(s: &str) -> ProbeFailed {
        ProbeFailed(s.to_string())
    }
}

/// Runs `health` against `port`; Err carries a one-line reason.
pub async fn run(
    health: &Health,
    port: Option<u16>,
    timeout: Duration,
    spawner: &super::spawner::Spawner,
) -> Result<(), ProbeFailed> {
    match tokio::time::timeout(timeout, probe(health, port, spawner)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}ms", timeout.as_millis()).into()),
    }
}

async fn probe(
    health: &Health,
    port: Option<u16>,
    spawner: &super::spawner::Spawner,
) -> Result<(), ProbeFailed> {
    match health {
        Health::Tcp => {
            let port = port.ok_or("no port")?;
            TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|e| format!("tcp connect to port {port}: {e}").into())
        }
        Health::Http(path) => {
            let port = port.ok_or("no port")?;
            let mut s = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("GET {path} on port {port}: {e}"))?;
            let req = format!(
                "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: paddock-probe\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("GET {path} on port {port}: {e}"))?;
            let mut head = [0u8; 64];
            let mut n = 0;
            while n < 12 {
                match s.read(&mut head[n..]).await {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Err(format!("GET {path} on port {port}: {e}").into()),
                }
            }
            let line = String::from_utf8_lossy(&head[..n]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("GET {path} on port {port}: not an HTTP answer"))?;
            if (200..300).contains(&code) {
                Ok(())
            } else {
                Err(format!("GET {path} on port {port} answered {code}").into())
            }
        }
        Health::Exec(argv) => {
            let mut cmd = std::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            if let Some(p) = port {
                cmd.env("PORT", p.to_string());
            }
            let mut child = spawner
                .spawn(cmd)
                .await
                .map_err(|e| format!("health program {:?}: {e}", argv[0]))?;
            let mut guard = KillGroupOnDrop(child.id().map(|p| p as i32));
            let status = child
                .wait()
                .await
                .map_err(|e| format!("health program {:?}: {e}", argv[0]))?;
            guard.0 = None;
            if status.success() {
                Ok(())
            } else {
                Err(format!(
                    "health program {:?} {}",
                    argv[0],
                    crate::status::describe_exit(status)
                )
                .into())
            }
        }
    }
}

/// Kills a probe's process group if the probe is abandoned (its timeout passed).
struct KillGroupOnDrop(Option<i32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            paddock_sys::signal::kill_group(pgid, paddock_sys::signal::SIGKILL);
        }
    }
}
