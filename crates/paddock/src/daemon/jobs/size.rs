//! The job store's size, sampled: what `job_store_max_size` is held to.
//!
//! Why sampled: reading the size costs a statement on the store's loop, too much
//! for every enqueue. One task reads it once a second and publishes it on a
//! `watch`; enqueues compare the last reading with the limit. A burst can so pass
//! the limit by at most a second's worth of enqueues.
//!
//! Invariants: only enqueues are refused past the limit; claims, results, retries
//! and pruning go on, so the store shrinks again as retention prunes it; a reading
//! that failed keeps the last one (never 0, which would open the gate).

use std::time::Duration;

use tokio::sync::watch;

use super::Store;

/// How often the size is read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Reads the size now, then every `SAMPLE_EVERY` until `shutdown`; the receiver
/// has the last reading (None before the first).
pub fn start(store: Store, mut shutdown: watch::Receiver<bool>) -> watch::Receiver<Option<u64>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            if let Some(bytes) = store.size().await {
                tx.send_replace(Some(bytes));
            }
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    });
    rx
}

/// Why an enqueue is refused, if the store is past `limit` (the last reading).
pub fn over(size: Option<u64>, limit: u64) -> Option<String> {
    let size = size?;
    (size >= limit).then(|| {
        format!(
            "the job store holds {size} bytes, at its limit of {limit} bytes (instance.job_store_max_size): new jobs are refused until finished ones are pruned (job_retention) or the limit is raised; queued jobs still run"
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_reading_at_the_limit_refuses() {
        assert_eq!(super::over(None, 10), None);
        assert_eq!(super::over(Some(9), 10), None);
        let why = super::over(Some(10), 10).unwrap();
        assert!(
            why.contains("10 bytes") && why.contains("job_store_max_size"),
            "{why}"
        );
    }
}
