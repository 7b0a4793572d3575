//! The instance's memory budget (`[instance] memory_budget`): it governs *starts
//! and evictions* of workers, counted in resident memory of each worker's process
//! tree (read through `paddock_sys::procs`: /proc on Linux, libproc on macOS).
//!
//! Before a coordinator starts a worker it asks [`Budget::admit`]. The need is the
//! service's `memory_estimate`, else the largest memory one of its workers was seen
//! to hold, else unknown (then the start needs only some room left, and the need is
//! learned). When the need does not fit, idle workers of *other* services that may
//! unload (beyond their `min_workers`) are stopped, least recently used service
//! first, one at a time, each waited for until it has exited; only then does the
//! start go ahead. When nothing can be evicted, the start waits and the waiting
//! requests are told why (what holds the budget, what the start waits for).
//!
//! Invariants:
//! - a worker with a request in flight is never evicted: a victim is taken off its
//!   dispatcher's idle list first, so no request can reach it after;
//! - at most one eviction is under way at a time, and a start is admitted only
//!   after it has exited (its memory returned);
//! - a start admitted holds a reservation of its need until its worker is ready or
//!   has failed, so two starts cannot both take the same room;
//! - a worker that grows past its estimate is governed by its own `max_rss`, never
//!   by killing another service's worker mid-request.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::Load;
use crate::config::Service;
use crate::daemon::dispatch::Dispatcher;
use crate::daemon::messages::Command;
use crate::daemon::metrics::Metrics;
use crate::status::{Phase, WorkerStatus};

/// A service, as the budget sees it.
pub struct Member {
    pub service: Arc<Service>,
    pub dispatcher: Option<Dispatcher>,
    pub workers: watch::Receiver<Vec<watch::Receiver<WorkerStatus>>>,
    pub load: Load,
}

/// Whether a worker may start now.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Go,
    /// Not yet: why (an eviction under way, or no room and nothing to evict).
    Wait(String),
}

/// What the budget holds now.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub limit: u64,
    /// Resident memory of every worker's processes.
    pub used: u64,
    /// Reserved for admitted starts, beyond what those workers hold yet.
    pub reserved: u64,
    /// What loaded workers may grow back to: each one's expected size (its
    /// service's memory_estimate, else the most one of its workers held) beyond
    /// what it holds now. A worker that held 250 MiB while it served and 170 MiB
    /// idle still needs its 250.
    pub headroom: u64,
    /// Per service: its workers, what they hold, how many serve a request now.
    pub holders: Vec<(String, usize, u64, usize)>,
}

struct Reservation {
    service: String,
    index: u32,
    bytes: u64,
}

struct Eviction {
    service: String,
    wid: u64,
    dispatcher: Dispatcher,
}

#[derive(Default)]
struct State {
    members: Vec<Member>,
    reservations: Vec<Reservation>,
    evicting: Option<Eviction>,
}

pub struct Budget {
    limit: u64,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

impl Budget {
    pub fn new(limit: u64, metrics: Arc<Metrics>) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            state: Mutex::new(State::default()),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, member: Member) {
        self.lock().members.push(member);
    }

    /// What the workers hold now (one reading of the process table).
    pub fn usage(&self) -> Usage {
        let st = self.lock();
        usage_of(&st, self.limit)
    }

    /// May a worker of `service` start in slot `index`? On `Go`, its need is
    /// reserved until [`Budget::release`].
    pub fn admit(&self, service: &str, index: u32) -> Admission {
        let mut st = self.lock();
        if let Some(e) = &st.evicting {
            if e.dispatcher.is_member(e.wid) {
                return Admission::Wait(self.evicting_from(&e.service));
            }
            st.evicting = None;
        }
        let Some(me) = st
            .members
            .iter()
            .find(|m| m.service.name.as_str() == service)
        else {
            return Admission::Go;
        };
        let estimate = me.service.scaling.memory_estimate;
        let (need, known) = match (estimate, me.load.lock().memory_peak) {
            (e, _) if e > 0 => (e, "its memory_estimate"),
            (_, p) if p > 0 => (p, "the most one of its workers held before"),
            _ => (0, "unknown: it has not run yet"),
        };
        let u = usage_of(&st, self.limit);
        let taken = u.used + u.reserved + u.headroom;
        let fits = if need == 0 {
            taken < self.limit
        } else {
            taken + need <= self.limit
        };
        if fits {
            st.reservations.push(Reservation {
                service: service.to_string(),
                index,
                bytes: need,
            });
            return Admission::Go;
        }
        // Evict the least recently used idle worker of another service that may
        // unload.
        let victim = st
            .members
            .iter()
            .filter(|m| m.service.name.as_str() != service)
            .filter_map(|m| {
                let d = m.dispatcher.as_ref()?;
                let live = m
                    .workers
                    .borrow()
                    .iter()
                    .filter(|w| w.borrow().state != Phase::Stopped)
                    .count();
                (live > m.service.scaling.min_workers as usize).then_some(())?;
                let (wid, since) = d.longest_idle()?;
                Some((d.last_used(), since, wid, m))
            })
            .min_by_key(|(used, since, _, _)| (*used, *since));
        if let Some((_, _, wid, m)) = victim {
            let d = m.dispatcher.clone().expect("a victim has a dispatcher");
            if let Some((wid, tx)) = d.take_idle(wid) {
                let why = format!(
                    "evicted to make room for {service} under memory_budget {} ({} in use, {service} needs about {}: {known})",
                    mib(self.limit),
                    mib(taken),
                    mib(need)
                );
                tracing::info!(service = %m.service.name, "{why}");
                {
                    let mut r = m.load.lock();
                    r.evictions += 1;
                    r.last_eviction = Some(format!("{}: {why}", crate::timefmt::now()));
                    r.evicted.push((wid, why));
                }
                self.metrics
                    .evictions
                    .get_or_create(&Metrics::service(m.service.name.as_str()))
                    .inc();
                let _ = tx.send(Command::Retire);
                let name = m.service.name.to_string();
                st.evicting = Some(Eviction {
                    service: name.clone(),
                    wid,
                    dispatcher: d,
                });
                return Admission::Wait(self.evicting_from(&name));
            }
        }
        let held: Vec<String> = u
            .holders
            .iter()
            .filter(|(_, n, _, _)| *n > 0)
            .map(|(s, n, bytes, busy)| {
                format!(
                    "{s} {} in {n} worker{} ({busy} serving)",
                    mib(*bytes),
                    if *n == 1 { "" } else { "s" }
                )
            })
            .collect();
        Admission::Wait(format!(
            "memory_budget {} is held: {} in use ({}), {} more that loaded workers reached before, {} reserved for workers starting; {service} needs about {} ({known}) and no idle worker of another service may be unloaded",
            mib(self.limit),
            mib(u.used),
            if held.is_empty() {
                "by nothing paddock started".to_string()
            } else {
                held.join(", ")
            },
            mib(u.headroom),
            mib(u.reserved),
            mib(need)
        ))
    }

    /// The worker started in `service`'s slot `index` is ready or has failed: its
    /// reservation ends (what it holds is counted from now on).
    /// Why a start waits while a worker of `service` is evicted.
    fn evicting_from(&self, service: &str) -> String {
        format!(
            "waiting for an idle worker of {service} to exit (evicted to make room under memory_budget {})",
            mib(self.limit)
        )
    }

    pub fn release(&self, service: &str, index: u32) {
        self.lock()
            .reservations
            .retain(|r| !(r.service == service && r.index == index));
    }

    /// Reads every worker's peak memory once a second (the kernel's high-water
    /// mark, so a spike while a model loads is not missed) and remembers each
    /// service's largest: what its next start is expected to need.
    pub async fn sample(self: Arc<Budget>) {
        loop {
            // Every serving worker's pid, with its service's record; their peaks
            // are read from one reading of the process table after the lock is
            // let go, so an admission never waits for /proc.
            let serving: Vec<(super::Load, i32)> = self
                .lock()
                .members
                .iter()
                .flat_map(|m| {
                    m.workers
                        .borrow()
                        .iter()
                        .filter_map(|w| {
                            let w = w.borrow();
                            w.state.serving().then_some(w.pid).flatten()
                        })
                        .map(|pid| (m.load.clone(), pid))
                        .collect::<Vec<_>>()
                })
                .collect();
            let pids: Vec<i32> = serving.iter().map(|(_, p)| *p).collect();
            let peaks = paddock_sys::procs::trees_peak_rss(&pids);
            for ((load, _), peak) in serving.iter().zip(peaks) {
                if let Some(bytes) = peak {
                    load.observe(bytes);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// What the budget reads of a worker.
struct Seen {
    index: u32,
    pid: Option<i32>,
    state: Phase,
}

fn usage_of(st: &State, limit: u64) -> Usage {
    let mut u = Usage {
        limit,
        ..Usage::default()
    };
    // Every member's workers, then their memory from one reading of the process
    // table.
    let workers: Vec<Vec<Seen>> = st
        .members
        .iter()
        .map(|m| {
            m.workers
                .borrow()
                .iter()
                .map(|w| {
                    let w = w.borrow();
                    Seen {
                        index: w.index,
                        pid: w.pid,
                        state: w.state,
                    }
                })
                .collect()
        })
        .collect();
    let pids: Vec<i32> = workers.iter().flatten().filter_map(|w| w.pid).collect();
    let mut sizes = paddock_sys::procs::trees_rss(&pids).into_iter();
    for (m, workers) in st.members.iter().zip(&workers) {
        let name = m.service.name.as_str();
        let expected = match m.service.scaling.memory_estimate {
            0 => m.load.lock().memory_peak,
            e => e,
        };
        let live: Vec<&Seen> = workers.iter().filter(|w| w.pid.is_some()).collect();
        let mut total = 0;
        for w in &live {
            let rss = sizes.next().flatten().unwrap_or(0);
            total += rss;
            match st
                .reservations
                .iter()
                .find(|r| r.service == name && r.index == w.index)
            {
                Some(r) => u.reserved += r.bytes.saturating_sub(rss),
                None => u.headroom += expected.saturating_sub(rss),
            }
        }
        // Reserved for a start whose process does not exist yet.
        for r in st.reservations.iter().filter(|r| r.service == name) {
            if !live.iter().any(|w| w.index == r.index) {
                u.reserved += r.bytes;
            }
        }
        u.used += total;
        let busy = workers.iter().filter(|w| w.state == Phase::Busy).count();
        u.holders.push((name.to_string(), live.len(), total, busy));
    }
    u
}

/// Bytes as MiB, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}
