//! Ports: binding one with a deep backlog, choosing a free one, and telling who
//! holds a busy one.

use std::net::TcpListener;

/// The listen backlog: the gateway's connections past `max_connections`, and a
/// `listen_fd` service's connections during a reload, wait here.
const BACKLOG: u32 = 4096;

/// Binds `addr` with a deep backlog.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A free loopback port, chosen by the kernel.
pub fn pick_free() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Who listens on `port`, as "pid 123 (python3 -m http.server 8000)"; None when
/// nobody does. When the process table cannot tell who, says so.
pub fn holder(port: u16) -> Option<String> {
    let pids = paddock_sys::procs::listener_pids(port)?;
    if pids.is_empty() {
        return Some("a process paddock cannot see (another user's?)".into());
    }
    Some(
        pids.iter()
            .map(|&p| format!("pid {p} ({})", paddock_sys::procs::cmdline(p)))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Proof that the listener on `port` belongs to the process tree of group `pgid`.
pub enum Ownership {
    NotListening,
    Ours,
    /// Someone else listens: a description of them.
    Foreign(String),
    /// The process table cannot be read here: ownership cannot be proven.
    Unknown,
}

pub fn ownership(port: u16, pgid: i32) -> Ownership {
    if !paddock_sys::procs::available() {
        return Ownership::Unknown;
    }
    if paddock_sys::procs::listener_pids(port).is_none() {
        return Ownership::NotListening;
    }
    let tree = paddock_sys::procs::tree_of_group(pgid);
    if paddock_sys::procs::any_listens(&tree, port) {
        return Ownership::Ours;
    }
    match holder(port) {
        Some(h) => Ownership::Foreign(h),
        // The listener vanished between the two reads.
        None => Ownership::NotListening,
    }
}
