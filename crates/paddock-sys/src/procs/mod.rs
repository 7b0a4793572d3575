//! What paddock reads about processes: which processes form a worker's tree and
//! group, when a process started (to tell a live process from a reused pid), its
//! memory, threads, mapped libraries and environment, and who listens on a port.
//!
//! One interface, one implementation per platform: Linux reads /proc
//! (`linux.rs`); macOS asks the kernel through libproc and sysctl (`macos.rs`,
//! type-checked on every CI run, not run here); anywhere else every answer is
//! empty. Everything is best effort and read-only: callers treat "unknown" (an
//! empty answer, `None`) as "not proven", never as "proven absent" — except
//! [`available`], which says whether the answers mean anything at all.

use std::collections::{BTreeSet, HashMap};

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as os;

#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
use macos as os;

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod os {
    //! No process table: every answer is "unknown".
    use super::ProcInfo;
    use std::collections::{BTreeSet, HashMap};
    pub fn stat(_: i32) -> Option<ProcInfo> {
        None
    }
    pub fn all_processes() -> Vec<ProcInfo> {
        vec![]
    }
    pub fn cmdline(_: i32) -> String {
        String::new()
    }
    pub fn mapped_files(_: i32) -> BTreeSet<String> {
        BTreeSet::new()
    }
    pub fn environ(_: i32) -> HashMap<String, String> {
        HashMap::new()
    }
    pub fn thread_count(_: i32) -> Option<usize> {
        None
    }
    pub fn rss_bytes(_: i32) -> Option<u64> {
        None
    }
    pub fn peak_rss_bytes(_: i32) -> Option<u64> {
        None
    }
    pub fn listener_pids(_: u16) -> Option<Vec<i32>> {
        None
    }
    pub fn any_listens(_: &[i32], _: u16) -> bool {
        false
    }
    pub fn available() -> bool {
        false
    }
    pub fn cgroup_oom_kills() -> Option<u64> {
        None
    }
}

/// A process, as far as the kernel tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Exited, not yet reaped: holds no memory, descriptor or device.
    pub zombie: bool,
    /// When it started, in a platform unit (Linux: clock ticks since boot; macOS:
    /// microseconds since the epoch); with the pid, a unique identity.
    pub start_time: u64,
}

/// One process.
pub fn stat(pid: i32) -> Option<ProcInfo> {
    os::stat(pid)
}

/// Every process we can see.
pub fn all_processes() -> Vec<ProcInfo> {
    os::all_processes()
}

/// The processes of group `pgid` that have not exited yet (zombies, which hold no
/// memory, descriptors or device, do not count).
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|p| p.pgid == pgid && !p.zombie)
        .map(|p| p.pid)
        .collect()
}

/// The processes of group `pgid` and all their descendants (a child that moved to
/// another group is still part of the tree).
pub fn tree_of_group(pgid: i32) -> Vec<i32> {
    ProcessTable::read().tree_of_group(pgid)
}

/// The resident memory of each group's tree (as [`tree_of_group`]), from one
/// reading of the process table: what a memory budget adds up. None for a group
/// none of whose processes could be read.
pub fn trees_rss(pgids: &[i32]) -> Vec<Option<u64>> {
    trees_sum(pgids, rss_bytes)
}

/// The most memory each group's tree has held: the sum of its processes' peaks
/// ([`peak_rss_bytes`]; an upper bound, as they need not have peaked together).
pub fn trees_peak_rss(pgids: &[i32]) -> Vec<Option<u64>> {
    trees_sum(pgids, peak_rss_bytes)
}

fn trees_sum(pgids: &[i32], of: fn(i32) -> Option<u64>) -> Vec<Option<u64>> {
    let table = ProcessTable::read();
    pgids
        .iter()
        .map(|&g| {
            table
                .tree_of_group(g)
                .into_iter()
                .filter_map(of)
                .reduce(|a, b| a + b)
        })
        .collect()
}

/// One reading of the process table, indexed by parent: the trees of several
/// groups from one pass over `/proc` (or `proc_listallpids`).
pub struct ProcessTable {
    all: Vec<ProcInfo>,
    children: HashMap<i32, Vec<i32>>,
}

impl ProcessTable {
    pub fn read() -> ProcessTable {
        ProcessTable::of(all_processes())
    }

    fn of(all: Vec<ProcInfo>) -> ProcessTable {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for p in &all {
            children.entry(p.ppid).or_default().push(p.pid);
        }
        ProcessTable { all, children }
    }

    /// As [`tree_of_group`], in this reading.
    pub fn tree_of_group(&self, pgid: i32) -> Vec<i32> {
        let mut out: BTreeSet<i32> = self
            .all
            .iter()
            .filter(|p| p.pgid == pgid)
            .map(|p| p.pid)
            .collect();
        let mut stack: Vec<i32> = out.iter().copied().collect();
        while let Some(pid) = stack.pop() {
            for &c in self.children.get(&pid).map(|v| v.as_slice()).unwrap_or(&[]) {
                if out.insert(c) {
                    stack.push(c);
                }
            }
        }
        out.into_iter().collect()
    }
}

/// The pids of every process in session `sid`.
pub fn session_members(sid: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|p| p.sid == sid)
        .map(|p| p.pid)
        .collect()
}

/// A process's command line, space-joined ("" when unknown).
pub fn cmdline(pid: i32) -> String {
    os::cmdline(pid)
}

/// The files a process has mapped (its shared libraries among them), each once.
pub fn mapped_files(pid: i32) -> BTreeSet<String> {
    os::mapped_files(pid)
}

/// A process's environment (empty when it cannot be read).
pub fn environ(pid: i32) -> HashMap<String, String> {
    os::environ(pid)
}

/// How many OS threads a process has (every kernel thread: native ones too).
pub fn thread_count(pid: i32) -> Option<usize> {
    os::thread_count(pid)
}

/// Resident memory in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    os::rss_bytes(pid)
}

/// The most memory the process has held, in bytes (Linux: `VmHWM`; macOS: the
/// lifetime maximum physical footprint).
pub fn peak_rss_bytes(pid: i32) -> Option<u64> {
    os::peak_rss_bytes(pid)
}

/// Who listens on TCP `port`: None when nobody does (as far as we can tell); the
/// pids holding the listener otherwise — empty when they are invisible to us
/// (another user's process, without privileges).
pub fn listener_pids(port: u16) -> Option<Vec<i32>> {
    os::listener_pids(port)
}

/// Whether one of `pids` holds a listening socket on TCP `port`.
pub fn any_listens(pids: &[i32], port: u16) -> bool {
    os::any_listens(pids, port)
}

/// Whether this platform's process table can be read (so ownership checks mean
/// something).
pub fn available() -> bool {
    os::available()
}

/// The kernel's OOM-kill counter for this process's cgroup (Linux cgroup v2);
/// None where unknown (and always on macOS, which has no OOM killer of that
/// kind: it pages out or ends processes by jetsam, which `max_rss` precedes).
pub fn cgroup_oom_kills() -> Option<u64> {
    os::cgroup_oom_kills()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, pgid: i32) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            pgid,
            sid: 1,
            zombie: false,
            start_time: 1,
        }
    }

    #[test]
    fn a_tree_is_its_group_and_every_descendant() {
        // 10 leads group 10; 11 is its child in the group; 12 moved to its own
        // group but is still 11's child; 13 is 12's; 20 is unrelated.
        let all = ProcessTable::of(vec![
            p(10, 1, 10),
            p(11, 10, 10),
            p(12, 11, 12),
            p(13, 12, 12),
            p(20, 1, 20),
        ]);
        assert_eq!(all.tree_of_group(10), vec![10, 11, 12, 13]);
        assert_eq!(all.tree_of_group(20), vec![20]);
        assert!(all.tree_of_group(30).is_empty());
    }

    #[test]
    fn own_process_is_visible() {
        if !available() {
            return; // no process table on this platform: nothing to check
        }
        let me = stat(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(me.start_time > 0);
        assert!(thread_count(me.pid).unwrap() >= 1);
        assert!(rss_bytes(me.pid).unwrap() > 0);
        assert!(tree_of_group(me.pgid).contains(&me.pid));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_peak_remembers_memory_given_back() {
        let me = std::process::id() as i32;
        {
            // Touched pages: resident, then given back.
            let v = vec![1u8; 64 << 20];
            std::hint::black_box(&v);
        }
        let peak = peak_rss_bytes(me).expect("our own peak");
        assert!(peak >= 64 << 20, "{peak}");
        assert!(peak >= rss_bytes(me).unwrap());
        assert_eq!(trees_peak_rss(&[-1]), vec![None]);
    }

    #[test]
    fn a_listener_is_found_and_owned() {
        if !available() {
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        let pids = listener_pids(port).expect("someone listens");
        assert!(pids.contains(&me), "{pids:?}");
        assert!(any_listens(&[me], port));
        drop(l);
        assert!(listener_pids(port).is_none());
        assert!(!any_listens(&[me], port));
    }
}
