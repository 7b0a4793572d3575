//! The job store's size: what `job_store_max_size` is held to.
//!
//! Why sampled: reading the size costs a statement on the store's loop, too much
//! for every enqueue. One task reads it once a second; between two readings, each
//! accepted enqueue adds its body's size to a counter, so the estimate an enqueue
//! is judged by is the last reading plus what was enqueued since (a burst cannot
//! run far past the limit between two readings).
//!
//! Invariants: only enqueues are refused past the limit; claims, results, retries
//! and pruning go on, so the store shrinks again as retention prunes it; a reading
//! that failed keeps the last one (never 0, which would open the gate); the counter
//! is only ever decreased by what a reading has since covered, so the estimate errs
//! high, never low.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::Store;

/// How often the size is read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What a stored job costs beyond its body (row, indexes, history): a rough
/// figure, only for the estimate between two readings.
const ROW_OVERHEAD: u64 = 512;

/// The store's size as last read, and what was enqueued since.
#[derive(Clone)]
pub struct StoreSize {
    reading: watch::Receiver<Option<u64>>,
    since: Arc<AtomicU64>,
}

impl StoreSize {
    /// Reads the size now, then every `SAMPLE_EVERY` until `shutdown`.
    pub fn start(store: Store, mut shutdown: watch::Receiver<bool>) -> StoreSize {
        let (tx, reading) = watch::channel(None);
        let since = Arc::new(AtomicU64::new(0));
        let counter = since.clone();
        tokio::spawn(async move {
            loop {
                // Enqueues acknowledged before the reading was asked for are in it.
                let covered = counter.load(Ordering::Acquire);
                if let Some(bytes) = store.size().await {
                    counter.fetch_sub(covered, Ordering::AcqRel);
                    tx.send_replace(Some(bytes));
                }
                tokio::select! {
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        });
        StoreSize { reading, since }
    }

    /// An enqueue of `body` bytes was acknowledged.
    pub fn added(&self, body: usize) {
        self.since
            .fetch_add(body as u64 + ROW_OVERHEAD, Ordering::AcqRel);
    }

    /// The last reading (None before the first).
    pub fn reading(&self) -> Option<u64> {
        *self.reading.borrow()
    }

    /// The last reading plus what was enqueued since (None before a reading).
    pub fn estimate(&self) -> Option<u64> {
        self.reading()
            .map(|r| r.saturating_add(self.since.load(Ordering::Acquire)))
    }
}

/// Why an enqueue is refused, if the store is past `limit` (`size`: the estimate).
pub fn over(size: Option<u64>, limit: u64) -> Option<String> {
    let size = size?;
    (size >= limit).then(|| {
        format!(
            "the job store holds about {size} bytes, at its limit of {limit} bytes (instance.job_store_max_size): new jobs are refused until finished ones are pruned (job_retention) or the limit is raised; queued jobs still run"
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_size_at_the_limit_refuses() {
        assert_eq!(super::over(None, 10), None);
        assert_eq!(super::over(Some(9), 10), None);
        let why = super::over(Some(10), 10).unwrap();
        assert!(
            why.contains("10 bytes") && why.contains("job_store_max_size"),
            "{why}"
        );
    }
}
