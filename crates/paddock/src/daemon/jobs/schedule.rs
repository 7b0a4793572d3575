//! Periodic jobs: one task per `[[services.NAME.schedule]]` that enqueues a job at
//! each tick of its cron expression (docs/jobs.md, "Periodic jobs").
//!
//! Invariants:
//! - each tick is enqueued exactly once, however many daemons share the store: the
//!   store records (service, schedule, tick) with the job in one transaction, and a
//!   tick recorded already enqueues nothing (`Store::tick`); the record is kept
//!   apart from the jobs, so retention never forgets a tick;
//! - after downtime, `missed = "skip"` goes on from the next tick, `missed = "once"`
//!   first enqueues the latest missed tick (one, however many were missed); a
//!   schedule that never ran has missed nothing;
//! - ticks that pass while the task cannot run (a suspended machine, a clock set
//!   forward, a store that was down) are missed ticks, met by `missed` too: never a
//!   burst of every one of them;
//! - the task sleeps until the next tick (no polling) and ends when the daemon stops.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::pump::Signals;
use super::{NewJob, Store, Tick, ms_to_rfc3339, now_ms};
use crate::config::Service;
use crate::config::schedule::{Missed, Schedule};

/// How late a tick may fire and still count as on time.
const LATE: Duration = Duration::from_secs(5);

/// Starts one task per schedule of `service`.
pub fn start(service: Arc<Service>, store: Store, pump: Signals, shutdown: watch::Receiver<bool>) {
    for schedule in service.schedules.clone() {
        tokio::spawn(run(
            service.clone(),
            schedule,
            store.clone(),
            pump.clone(),
            shutdown.clone(),
        ));
    }
}

async fn run(
    service: Arc<Service>,
    schedule: Schedule,
    store: Store,
    pump: Signals,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = format!("{}/{}", service.name, schedule.name);
    let last = match store.last_tick(service.name.as_str(), &schedule.name).await {
        Ok(last) => last,
        Err(e) => {
            tracing::error!("schedule {name}: reading its last tick: {e}; it starts from now");
            None
        }
    };
    let now = now_ms();
    if schedule.missed == Missed::Once
        && let Some(last) = last
        && let Some(missed) = schedule.latest_at_or_before(now).filter(|t| *t > last)
    {
        tracing::info!(
            "schedule {name}: the tick of {} was missed (missed = \"once\"): enqueued now",
            ms_to_rfc3339(missed)
        );
        fire(&service, &schedule, &name, missed, &store, &pump).await;
    }
    let mut after = now.max(last.unwrap_or(0));
    loop {
        let Some(next) = schedule.next_after(after) else {
            tracing::info!("schedule {name}: {:?} fires no more", schedule.cron);
            return;
        };
        // Ticks that passed while this task could not run (a suspended machine, a
        // clock set forward, a store that was down) are missed ticks: `missed`
        // decides, as at start, instead of a burst of every one of them.
        let now = now_ms();
        if next < now - LATE.as_millis() as i64 {
            let latest = schedule.latest_at_or_before(now).unwrap_or(next);
            tracing::warn!(
                "schedule {name}: the ticks from {} to {} were missed ({})",
                ms_to_rfc3339(next),
                ms_to_rfc3339(latest),
                if schedule.missed == Missed::Once {
                    "the latest is enqueued now"
                } else {
                    "skipped"
                }
            );
            if schedule.missed == Missed::Once {
                fire(&service, &schedule, &name, latest, &store, &pump).await;
            }
            after = latest.max(now);
            continue;
        }
        let wait = Duration::from_millis(next.saturating_sub(now_ms()).max(0) as u64);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // The wall clock decides: a timer that woke early waits again.
        if now_ms() < next {
            continue;
        }
        fire(&service, &schedule, &name, next, &store, &pump).await;
        after = next;
    }
}

/// Enqueues the job of tick `tick_ms`, unless the tick was enqueued already.
async fn fire(
    service: &Service,
    schedule: &Schedule,
    name: &str,
    tick_ms: i64,
    store: &Store,
    pump: &Signals,
) {
    let tick = Tick {
        schedule: schedule.name.clone(),
        tick_ms,
        job: NewJob {
            service: service.name.to_string(),
            method: schedule.handler.clone(),
            content_type: "application/json".into(),
            body: schedule.body.clone(),
            idempotency_key: None,
            max_attempts: service.max_attempts,
            run_after_ms: None,
            priority: 0,
        },
    };
    match store.tick(tick).await {
        Ok(Some(id)) => {
            tracing::info!(
                "schedule {name}: tick {} enqueued job {id}",
                ms_to_rfc3339(tick_ms)
            );
            pump.wake();
        }
        Ok(None) => tracing::debug!(
            "schedule {name}: tick {} was enqueued by another daemon",
            ms_to_rfc3339(tick_ms)
        ),
        Err(e) => tracing::error!(
            "schedule {name}: enqueuing tick {}: {e}",
            ms_to_rfc3339(tick_ms)
        ),
    }
}
