//! Models on demand: what an elastic service's coordinator decides
//! ([`decide`]), the instance's memory budget that governs starts and evictions
//! ([`budget`]), and the record each service keeps of its loads, unloads and
//! evictions ([`Load`]) for `status`, the dashboard and `/metrics`.
//!
//! Invariants: the record is written by the service's coordinator and by the
//! budget (an eviction), read by the status edges; it holds no worker and decides
//! nothing.

pub mod budget;
pub mod decide;

use std::sync::{Arc, Mutex, MutexGuard};

/// What happened to a service's workers as they came and went.
#[derive(Debug, Default, Clone)]
pub struct LoadRecord {
    /// Since when no worker is loaded, and why (None while one is).
    pub unloaded: Option<(String, String)>,
    /// Starts on demand or under load, and the last one's time from the spawn to
    /// READY.
    pub cold_starts: u64,
    pub last_cold_start_ms: Option<u64>,
    /// How long the last cold start waited for room in the memory budget (for
    /// evicted workers to exit) before its spawn.
    pub last_cold_start_wait_ms: Option<u64>,
    /// Workers stopped to make room in the memory budget, and the last reason.
    pub evictions: u64,
    pub last_eviction: Option<String>,
    pub scale_ups: u64,
    pub scale_downs: u64,
    /// The largest resident memory one worker of the service was seen to hold.
    pub memory_peak: u64,
    /// Why worker `wid` was asked to go, when someone other than its coordinator
    /// asked (the budget): the coordinator logs it as it sees the worker gone.
    pub evicted: Vec<(u64, String)>,
}

/// A service's record, shared by its coordinator, the budget and the status edges.
#[derive(Clone, Default)]
pub struct Load(Arc<Mutex<LoadRecord>>);

impl Load {
    pub fn lock(&self) -> MutexGuard<'_, LoadRecord> {
        // Nothing under the lock can panic half-way through a change.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker of the service was seen holding `bytes`.
    pub fn observe(&self, bytes: u64) {
        let mut r = self.lock();
        r.memory_peak = r.memory_peak.max(bytes);
    }

    pub fn snapshot(&self) -> LoadRecord {
        self.lock().clone()
    }
}
