//! A worker service's elasticity: how many workers it may have (`min_workers`,
//! `max_workers`), when an idle one is unloaded (`idle_timeout`), when another is
//! started (`target_queue`, `scale_up_after`), and what one is expected to hold
//! (`memory_estimate`, for the instance's `memory_budget`).
//!
//! Invariants: `workers = N` means exactly N (min = max = N) and cannot be written
//! with `min_workers` or `max_workers`; `min_workers <= max_workers`; the keys of
//! this file are refused on process services, and `idle_timeout` on a service
//! whose worker count cannot change (it would do nothing).

use std::time::Duration;

use super::ConfigError;
use super::checker::Checker;
use super::model::{Kind, Scaling};
use super::raw::RawService;
use super::values::MAX_WORKERS;

pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_TARGET_QUEUE: f64 = 1.0;
pub const DEFAULT_SCALE_UP_AFTER: Duration = Duration::from_secs(1);

/// The service's worker count (its maximum: the slots it has) and its scaling.
/// `default_workers`: what `workers` is when nothing is written (its GPU keys may
/// imply a count).
pub(super) fn build(
    c: &Checker,
    table: &str,
    rs: &RawService,
    default_workers: u64,
) -> Result<(u32, Scaling), ConfigError> {
    let elastic_keys = [
        ("min_workers", rs.min_workers.is_some()),
        ("max_workers", rs.max_workers.is_some()),
        ("idle_timeout", rs.idle_timeout.is_some()),
        ("target_queue", rs.target_queue.is_some()),
        ("scale_up_after", rs.scale_up_after.is_some()),
        ("memory_estimate", rs.memory_estimate.is_some()),
    ];
    if rs.kind == Kind::Process
        && let Some((key, _)) = elastic_keys.iter().find(|(_, set)| *set)
    {
        return Err(c.at(
            table,
            key,
            format!("`{key}` applies to kind = \"worker\" services only; a process service keeps `workers`"),
        ));
    }
    if rs.workers.is_some() {
        for key in ["min_workers", "max_workers"] {
            if elastic_keys.iter().any(|(k, set)| *k == key && *set) {
                return Err(c.at(
                    table,
                    key,
                    format!(
                        "write either `workers` (a fixed number) or `min_workers`/`max_workers` (a range), not both: `workers` and `{key}` are both set"
                    ),
                ));
            }
        }
    }
    let (min, max) = match (rs.min_workers, rs.max_workers) {
        (None, None) => {
            let n = c.num(
                table,
                "workers",
                rs.workers.map(u64::from),
                default_workers,
                1,
                MAX_WORKERS,
            )?;
            (n, n)
        }
        (min, max) => {
            let max = c.num(
                table,
                "max_workers",
                max.map(u64::from),
                u64::from(min.unwrap_or(1)).max(1),
                1,
                MAX_WORKERS,
            )?;
            let min = c.num(
                table,
                "min_workers",
                min.map(u64::from),
                1.min(max),
                0,
                MAX_WORKERS,
            )?;
            if min > max {
                return Err(c.at(
                    table,
                    "min_workers",
                    format!("min_workers ({min}) is above max_workers ({max})"),
                ));
            }
            (min, max)
        }
    };
    let idle_timeout = match (min < max, rs.idle_timeout) {
        (false, Some(_)) => {
            return Err(c.at(
                table,
                "idle_timeout",
                format!(
                    "the service always runs {max} worker{} (min_workers = max_workers), so none is ever unloaded: set min_workers below max_workers, or remove idle_timeout",
                    if max == 1 { "" } else { "s" }
                ),
            ));
        }
        (false, None) => None,
        (true, v) => Some(c.dur(table, "idle_timeout", v, DEFAULT_IDLE_TIMEOUT)?),
    };
    let target_queue = rs.target_queue.unwrap_or(DEFAULT_TARGET_QUEUE);
    if !(target_queue > 0.0 && target_queue <= 1_000_000.0) {
        return Err(c.at(
            table,
            "target_queue",
            format!("{target_queue} is out of range: write a number of queued requests per worker above 0"),
        ));
    }
    let scale_up_after = c.dur(
        table,
        "scale_up_after",
        rs.scale_up_after,
        DEFAULT_SCALE_UP_AFTER,
    )?;
    Ok((
        max as u32,
        Scaling {
            min_workers: min as u32,
            idle_timeout,
            target_queue,
            scale_up_after,
            memory_estimate: rs.memory_estimate.map(|b| b.0).unwrap_or(0),
        },
    ))
}
