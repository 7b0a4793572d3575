//! Linux: everything [`super`] offers, read from /proc.

use std::collections::{BTreeSet, HashMap};

use super::ProcInfo;
use std::fs;

/// Parses /proc/PID/stat.
pub fn stat(pid: i32) -> Option<ProcInfo> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &s)
}

fn parse_stat(pid: i32, s: &str) -> Option<ProcInfo> {
    // The command name is in parentheses and may itself contain ") ".
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) session(3) ... starttime(19)
    Some(ProcInfo {
        pid,
        zombie: f.first()?.starts_with('Z'),
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        sid: f.get(3)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// Every process visible in /proc.
pub fn all_processes() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// A process's command line, space-joined ("" when unknown).
pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The files a process has mapped (its shared libraries among them), each once.
pub fn mapped_files(pid: i32) -> BTreeSet<String> {
    let Ok(s) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return BTreeSet::new();
    };
    s.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/'))
        .map(String::from)
        .collect()
}

/// A process's environment (empty when it cannot be read).
pub fn environ(pid: i32) -> HashMap<String, String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How many OS threads a process has (every kernel task: native threads too).
pub fn thread_count(pid: i32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/task")).ok()?.count())
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The most resident memory the process has held (`VmHWM`, the kernel's high-water
/// mark), in bytes.
pub fn peak_rss_bytes(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Socket inodes in LISTEN state on TCP `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = vec![];
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(s) = fs::read_to_string(table) {
            out.extend(parse_listeners(&s, port));
        }
    }
    out
}

fn parse_listeners(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = f.get(1)?;
            let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            // st 0A = TCP_LISTEN
            if p != port || *f.get(3)? != "0A" {
                return None;
            }
            f.get(9)?.parse().ok()
        })
        .collect()
}

/// The socket inodes among `pid`'s open descriptors.
fn socket_inodes(pid: i32) -> BTreeSet<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| {
        let target = fs::read_link(e.ok()?.path()).ok()?;
        let t = target.to_str()?;
        t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// Who listens on TCP `port`: None when nobody does; the pids that hold the
/// listener otherwise (empty when they are invisible to us).
pub fn listener_pids(port: u16) -> Option<Vec<i32>> {
    let inodes: BTreeSet<u64> = listening_inodes(port).into_iter().collect();
    if inodes.is_empty() {
        return None;
    }
    Some(
        all_processes()
            .into_iter()
            .map(|p| p.pid)
            .filter(|&pid| !socket_inodes(pid).is_disjoint(&inodes))
            .collect(),
    )
}

/// Whether one of `pids` holds a listener on TCP `port`.
pub fn any_listens(pids: &[i32], port: u16) -> bool {
    let inodes: BTreeSet<u64> = listening_inodes(port).into_iter().collect();
    !inodes.is_empty()
        && pids
            .iter()
            .any(|&pid| !socket_inodes(pid).is_disjoint(&inodes))
}

/// Whether /proc is available (so ownership checks mean something).
pub fn available() -> bool {
    fs::metadata("/proc/self/stat").is_ok()
}

/// Bytes of the kernel's OOM-kill counter for this process's cgroup (cgroup v2),
/// read from `memory.events`; None where unknown.
pub fn cgroup_oom_kills() -> Option<u64> {
    let cg = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    let events = fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.events")).ok()?;
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_names_with_parentheses() {
        let s = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        let p = parse_stat(42, s).unwrap();
        assert_eq!((p.ppid, p.pgid, p.sid, p.start_time), (1, 42, 42, 777));
    }

    #[test]
    fn listeners_match_port_and_state() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1\n   1: 0100007F:1F90 0100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 999 1\n";
        assert_eq!(parse_listeners(t, 8080), vec![12345]);
        assert!(parse_listeners(t, 8081).is_empty());
    }
}
