//! The registry of live worker process groups.
//!
//! Two records of every group, so that no worker outlives its daemon:
//! - the reaper (a process forked before the runtime) is told of each group and kills
//!   them all when the daemon dies, however it dies;
//! - `groups.json` in the instance folder lists them with the leader's start time, so
//!   that the next `start` can kill what a dead daemon left if the reaper died too.
//!   Only groups whose leader still has the recorded start time are killed: paddock
//!   never kills a process it did not start.
//!
//! One task owns both records; workers send it messages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupRecord {
    pub pgid: i32,
    pub start_time: u64,
    pub session: i32,
}

enum Msg {
    Add(GroupRecord),
    Remove(i32),
}

#[derive(Clone)]
pub struct Groups {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Groups {
    pub fn start(mut reaper: paddock_sys::reaper::Reaper, file: PathBuf) -> Groups {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        tokio::spawn(async move {
            let mut live: BTreeMap<i32, GroupRecord> = BTreeMap::new();
            while let Some(msg) = rx.recv().await {
                match msg {
                    Msg::Add(r) => {
                        reaper.watch(r.pgid);
                        live.insert(r.pgid, r);
                    }
                    Msg::Remove(pgid) => {
                        reaper.forget(pgid);
                        live.remove(&pgid);
                    }
                }
                let records: Vec<&GroupRecord> = live.values().collect();
                let json = serde_json::to_vec(&records).unwrap_or_default();
                let tmp = file.with_extension("json.tmp");
                if tokio::fs::write(&tmp, &json).await.is_ok() {
                    let _ = tokio::fs::rename(&tmp, &file).await;
                }
            }
        });
        Groups { tx }
    }

    /// Records a new group whose leader is `pid`.
    pub fn add(&self, pid: i32) {
        let info = paddock_sys::procs::stat(pid);
        let _ = self.tx.send(Msg::Add(GroupRecord {
            pgid: pid,
            start_time: info.as_ref().map(|i| i.start_time).unwrap_or(0),
            session: info.map(|i| i.sid).unwrap_or(0),
        }));
    }

    pub fn remove(&self, pgid: i32) {
        let _ = self.tx.send(Msg::Remove(pgid));
    }
}

/// Waits until every process of group `pgid` has exited (after a SIGKILL to the
/// group), at most `limit`; returns the pids still alive then. A process stuck in
/// the kernel (an uninterruptible GPU driver call) can outlast any SIGKILL: the
/// caller says so rather than pretend it is gone.
///
/// There is no descriptor to wait on for a whole group, so the process table is read again
/// after short, growing pauses: the first look almost always finds the group empty.
pub async fn wait_gone(pgid: i32, limit: std::time::Duration) -> Vec<i32> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let left = paddock_sys::procs::live_group_members(pgid);
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

/// Kills the groups a dead daemon recorded, when they are provably its own; returns
/// how many were killed. Call only while holding the instance lock.
pub fn kill_leftovers(file: &Path) -> usize {
    let Ok(bytes) = std::fs::read(file) else {
        return 0;
    };
    let records: Vec<GroupRecord> = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut killed = 0;
    for r in records {
        let members: Vec<_> = paddock_sys::procs::all_processes()
            .into_iter()
            .filter(|p| p.pgid == r.pgid && p.sid == r.session)
            .collect();
        let leader_matches = members
            .iter()
            .any(|p| p.pid == r.pgid && p.start_time == r.start_time);
        // The leader may be gone while its children live on; they still carry the
        // group and session ids that only our worker could have given them.
        let leader_gone = !members.iter().any(|p| p.pid == r.pgid);
        if !members.is_empty() && (leader_matches || leader_gone) {
            paddock_sys::signal::kill_group(r.pgid, paddock_sys::signal::SIGKILL);
            killed += 1;
        }
    }
    let _ = std::fs::remove_file(file);
    killed
}
