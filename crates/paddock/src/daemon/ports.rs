//! Ports: choosing a free one, and telling who holds a busy one.

use std::net::TcpListener;

/// A free loopback port, chosen by the kernel.
pub fn pick_free() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Who listens on `port`, as "pid 123 (python3 -m http.server 8000)"; None when
/// nobody does. When /proc cannot tell who, says so.
pub fn holder(port: u16) -> Option<String> {
    if paddock_sys::procfs::listening_inodes(port).is_empty() {
        return None;
    }
    let pids = paddock_sys::procfs::listeners(port);
    if pids.is_empty() {
        return Some("a process paddock cannot see (another user's?)".into());
    }
    Some(
        pids.iter()
            .map(|&p| format!("pid {p} ({})", paddock_sys::procfs::cmdline(p)))
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
    /// /proc is not available: ownership cannot be proven here.
    Unknown,
}

pub fn ownership(port: u16, pgid: i32) -> Ownership {
    if !paddock_sys::procfs::available() {
        return Ownership::Unknown;
    }
    let inodes: std::collections::BTreeSet<u64> = paddock_sys::procfs::listening_inodes(port)
        .into_iter()
        .collect();
    if inodes.is_empty() {
        return Ownership::NotListening;
    }
    let tree = paddock_sys::procfs::tree_of_group(pgid);
    if tree
        .iter()
        .any(|&pid| !paddock_sys::procfs::socket_inodes(pid).is_disjoint(&inodes))
    {
        return Ownership::Ours;
    }
    match holder(port) {
        Some(h) => Ownership::Foreign(h),
        // The listener vanished between the two reads.
        None => Ownership::NotListening,
    }
}
