//! When an elastic service gets another worker, and when it lets one go: a pure
//! decision over what the coordinator sees, unit-tested without processes or
//! clocks.
//!
//! Invariants:
//! - a service below `min_workers` starts a worker at once; so does one with no
//!   worker while a request waits (a cold start);
//! - otherwise another worker starts only after the queue per worker — workers
//!   that are ready *or still starting*, so a model that takes 30 s to load does
//!   not get a new worker every second — stayed above `target_queue` for a whole
//!   `scale_up_after`; the clock starts again after each start;
//! - a worker is let go only when it has been idle `idle_timeout`, nothing is
//!   queued, and the service keeps `min_workers`. Scaling up needs a queue and
//!   scaling down needs a worker with nothing to do for minutes, so a steady load
//!   cannot do both in turn (no flapping).

use std::time::{Duration, Instant};

use crate::config::Scaling;

/// What the coordinator sees of its service at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Requests (and jobs) waiting for a worker.
    pub queued: usize,
    /// Workers that are starting or serving (not those being let go).
    pub live: u32,
    /// The most workers the service may run.
    pub max: u32,
    /// The worker idle the longest, and for how long.
    pub longest_idle: Option<(u64, Duration)>,
}

/// Why a worker starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// A request waits and no worker is loaded.
    Demand,
    /// Fewer workers than `min_workers`.
    Minimum,
    /// The queue per worker stayed above `target_queue` for `scale_up_after`.
    Load { per_worker: f64, for_: Duration },
}

impl Start {
    /// The reason, for the log, `status` and the metrics' `reason` label.
    pub fn label(&self) -> &'static str {
        match self {
            Start::Demand => "demand",
            Start::Minimum => "min_workers",
            Start::Load { .. } => "load",
        }
    }

    pub fn describe(&self, s: &Scaling) -> String {
        match self {
            Start::Demand => "a request arrived while no worker was loaded".into(),
            Start::Minimum => format!("fewer workers than min_workers ({})", s.min_workers),
            Start::Load { per_worker, for_ } => format!(
                "{per_worker:.1} queued requests per worker, above target_queue ({}) for {:.1}s",
                s.target_queue,
                for_.as_secs_f64()
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Hold,
    Start(Start),
    /// Let worker `wid` go: idle this long.
    Unload {
        wid: u64,
        idle: Duration,
    },
}

/// The decision's memory: since when the queue has been above target.
#[derive(Debug, Default)]
pub struct Scaler {
    above_since: Option<Instant>,
}

impl Scaler {
    pub fn decide(&mut self, seen: Seen, s: &Scaling, now: Instant) -> Decision {
        if seen.live < s.min_workers.min(seen.max) {
            self.above_since = None;
            return Decision::Start(Start::Minimum);
        }
        if seen.live == 0 {
            self.above_since = None;
            return if seen.queued > 0 {
                Decision::Start(Start::Demand)
            } else {
                Decision::Hold
            };
        }
        let per_worker = seen.queued as f64 / f64::from(seen.live);
        if per_worker > s.target_queue && seen.live < seen.max {
            let since = *self.above_since.get_or_insert(now);
            let for_ = now.saturating_duration_since(since);
            if for_ >= s.scale_up_after {
                self.above_since = None;
                return Decision::Start(Start::Load { per_worker, for_ });
            }
            return Decision::Hold;
        }
        if per_worker <= s.target_queue {
            self.above_since = None;
        }
        if let (Some(timeout), Some((wid, idle))) = (s.idle_timeout, seen.longest_idle)
            && seen.queued == 0
            && seen.live > s.min_workers
            && idle >= timeout
        {
            return Decision::Unload { wid, idle };
        }
        Decision::Hold
    }

    /// When the decision may change with nothing else happening: the end of the
    /// `scale_up_after` being counted, or the idle worker's `idle_timeout`.
    pub fn next_check(&self, seen: Seen, s: &Scaling, now: Instant) -> Option<Instant> {
        let up = self.above_since.map(|t| t + s.scale_up_after);
        let down = match (s.idle_timeout, seen.longest_idle) {
            (Some(t), Some((_, idle))) if seen.live > s.min_workers => {
                Some(now + t.saturating_sub(idle))
            }
            _ => None,
        };
        [up, down].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elastic(min: u32) -> Scaling {
        Scaling {
            min_workers: min,
            idle_timeout: Some(Duration::from_secs(60)),
            target_queue: 1.0,
            scale_up_after: Duration::from_secs(1),
            memory_estimate: 0,
        }
    }

    fn seen(queued: usize, live: u32, idle: Option<u64>) -> Seen {
        Seen {
            queued,
            live,
            max: 4,
            longest_idle: idle.map(|s| (7, Duration::from_secs(s))),
        }
    }

    #[test]
    fn an_unloaded_service_starts_a_worker_for_the_first_request_at_once() {
        let mut d = Scaler::default();
        let t = Instant::now();
        assert_eq!(d.decide(seen(0, 0, None), &elastic(0), t), Decision::Hold);
        assert_eq!(
            d.decide(seen(1, 0, None), &elastic(0), t),
            Decision::Start(Start::Demand)
        );
        assert_eq!(
            d.decide(seen(0, 0, None), &elastic(1), t),
            Decision::Start(Start::Minimum)
        );
    }

    #[test]
    fn a_queue_above_target_starts_a_worker_only_after_scale_up_after() {
        let mut d = Scaler::default();
        let s = elastic(1);
        let t = Instant::now();
        assert_eq!(d.decide(seen(3, 1, None), &s, t), Decision::Hold);
        assert_eq!(
            d.next_check(seen(3, 1, None), &s, t),
            Some(t + Duration::from_secs(1))
        );
        assert_eq!(
            d.decide(seen(3, 1, None), &s, t + Duration::from_millis(900)),
            Decision::Hold
        );
        assert!(matches!(
            d.decide(seen(3, 1, None), &s, t + Duration::from_secs(1)),
            Decision::Start(Start::Load { .. })
        ));
        // The clock starts again, and the worker still loading counts: 3 queued
        // over 2 workers is above target, but only for a fresh second.
        let t2 = t + Duration::from_millis(1100);
        assert_eq!(d.decide(seen(3, 2, None), &s, t2), Decision::Hold);
        // A dip to the target resets it.
        assert_eq!(
            d.decide(seen(2, 2, None), &s, t2 + Duration::from_millis(500)),
            Decision::Hold
        );
        assert_eq!(
            d.decide(seen(3, 2, None), &s, t2 + Duration::from_millis(1200)),
            Decision::Hold
        );
    }

    #[test]
    fn the_maximum_is_never_passed() {
        let mut d = Scaler::default();
        let t = Instant::now();
        for i in 0..10 {
            let at = t + Duration::from_secs(i);
            assert_eq!(
                d.decide(seen(100, 4, None), &elastic(1), at),
                Decision::Hold
            );
        }
    }

    #[test]
    fn an_idle_worker_goes_after_idle_timeout_but_never_below_min_or_with_a_queue() {
        let mut d = Scaler::default();
        let t = Instant::now();
        assert_eq!(
            d.decide(seen(0, 2, Some(59)), &elastic(1), t),
            Decision::Hold
        );
        assert_eq!(
            d.decide(seen(0, 2, Some(60)), &elastic(1), t),
            Decision::Unload {
                wid: 7,
                idle: Duration::from_secs(60)
            }
        );
        assert_eq!(
            d.decide(seen(0, 1, Some(600)), &elastic(1), t),
            Decision::Hold
        );
        assert!(matches!(
            d.decide(seen(0, 1, Some(600)), &elastic(0), t),
            Decision::Unload { .. }
        ));
        assert_eq!(
            d.decide(seen(1, 2, Some(600)), &elastic(1), t),
            Decision::Hold
        );
    }

    #[test]
    fn a_steady_load_between_the_thresholds_neither_starts_nor_stops_workers() {
        // 1.5 workers' worth on 2 workers: the queue stays at or under one per
        // worker, and no worker idles for a minute.
        let mut d = Scaler::default();
        let s = elastic(1);
        let t = Instant::now();
        for i in 0..10_000u64 {
            let at = t + Duration::from_millis(i * 10);
            let queued = (i % 3) as usize; // 0, 1, 2 queued over 2 workers
            let idle = Some((i % 50) / 10); // idle gaps of seconds at most
            assert_eq!(
                d.decide(seen(queued, 2, idle), &s, at),
                Decision::Hold,
                "at step {i}"
            );
        }
    }
}
