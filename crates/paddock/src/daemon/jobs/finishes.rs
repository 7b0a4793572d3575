//! Who waits for which job to finish: the long-polls of `GET /v1/jobs/{id}?wait=`.
//!
//! Why: a client waiting for a job should hear of its end when the store commits it,
//! not on its next poll, and the daemon must not poll either. The group-commit loop
//! calls [`Finishes::committed`] with the ids of the jobs whose attempt ended or that
//! were cancelled, once their group is committed; with PostgreSQL, another daemon's
//! finishes arrive through `NOTIFY paddock_finish` the same way. A waiter wakes, reads
//! the job again, and waits on if it is not finished after all (a failed attempt that
//! will be retried).
//!
//! Invariants: a waiter registers before it reads the job, so no finish can fall
//! between its read and its wait; a wake-up is a hint, never a state (the store is
//! read again); waiters that gave up are dropped at the next wake-up or on
//! [`Waiter`]'s drop, so the table holds only live waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The table of waits, shared by the store's handle and its commit loop.
#[derive(Debug, Default)]
pub struct Finishes {
    waits: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
}

/// One registered wait for a job; dropping it forgets it.
#[derive(Debug)]
pub struct Waiter {
    finishes: Arc<Finishes>,
    id: String,
    rx: oneshot::Receiver<()>,
}

impl Waiter {
    /// Resolves when the job's attempt ended or it was cancelled (or the table
    /// was dropped).
    pub async fn finished(&mut self) {
        let _ = (&mut self.rx).await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.rx.close();
        let mut waits = self.finishes.lock();
        if let Some(list) = waits.get_mut(&self.id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waits.remove(&self.id);
            }
        }
    }
}

impl Finishes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<oneshot::Sender<()>>>> {
        // A panic elsewhere leaves the table usable: it holds only senders.
        self.waits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a wait for job `id`.
    pub fn wait_for(self: &Arc<Self>, id: &str) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.lock().entry(id.to_string()).or_default().push(tx);
        Waiter {
            finishes: self.clone(),
            id: id.to_string(),
            rx,
        }
    }

    /// The store committed the end of these jobs' attempts (or their cancelling):
    /// wakes whoever waits for them.
    pub fn committed<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut waits = self.lock();
        if waits.is_empty() {
            return;
        }
        for id in ids {
            if let Some(list) = waits.remove(id) {
                for tx in list {
                    let _ = tx.send(());
                }
            }
        }
    }

    /// Wakes every waiter (they read their job again): after notifications may have
    /// been missed, and when the daemon stops.
    pub fn wake_all(&self) {
        let waits = std::mem::take(&mut *self.lock());
        for tx in waits.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    /// Whether any wait is registered.
    pub fn any(&self) -> bool {
        !self.lock().is_empty()
    }

    /// How many waits are registered (for `/metrics` and tests).
    pub fn waiting(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_commit_wakes_the_jobs_waiters_and_no_other() {
        let f = Arc::new(Finishes::default());
        let mut a1 = f.wait_for("a");
        let mut a2 = f.wait_for("a");
        let mut b = f.wait_for("b");
        assert_eq!(f.waiting(), 3);
        f.committed(["a", "c"]);
        a1.finished().await;
        a2.finished().await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), b.finished())
                .await
                .is_err(),
            "b did not finish"
        );
        drop((a1, a2));
        assert_eq!(f.waiting(), 1);
        drop(b);
        assert_eq!(f.waiting(), 0, "a waiter that gave up is forgotten");
    }
}
