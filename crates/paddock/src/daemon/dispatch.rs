//! The dispatcher: a worker service's request queue, and the list of its workers
//! that wait for a request.
//!
//! Why it is a queue behind a mutex and not a task: handing the next request to a
//! worker that just answered is the hot path. The worker's actor takes that request
//! itself ([`Dispatcher::next_for`]) and writes it to the worker before the answer
//! to the previous request goes back to its HTTP client; with a dispatcher task in
//! between, the client's reply was written first and the worker sat idle meanwhile
//! (see docs/benchmarks.md). The mutex is never held across an `.await` and nothing
//! but channel sends happens under it; each worker is still owned by its actor.
//!
//! Invariants:
//! - a worker holds at most one request: requests go only to workers that asked for
//!   one (`next_for`), and a worker is on the idle list at most once;
//! - the queue is bounded (`max_queue`); a full queue answers 503 at once;
//! - a request handed to a worker that died in between comes back (`requeue`) to the
//!   front of the queue: a crash never loses a queued request;
//! - while every worker of the service is crash-looping, nothing can serve a
//!   request soon: requests are answered 503 at once with the cause and the time
//!   of the next try, and what was queued is answered the same way;
//! - a request that waited `queue_timeout` is answered 503 (by a timer task that
//!   sleeps until the earliest deadline); one whose client went away is dropped
//!   without using a worker;
//! - elastic services (min_workers < max_workers): a request that finds no ready
//!   worker may wait `queue_timeout + startup_timeout` (a cold start's load time);
//!   idle workers are handed requests most recently idle first, so that the others
//!   stay idle long enough to unload; an idle worker taken off the idle list to be
//!   unloaded or evicted ([`Dispatcher::take_idle`]) is never handed a request again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use super::messages::{Command, Job, Outcome};
use super::metrics::Metrics;
use crate::status::ServiceState;

/// A handle to a service's dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    queue: Arc<Mutex<Queue>>,
    queue_timeout: Duration,
    /// Wakes the expiry task when the queue's earliest deadline may have changed.
    expiry: Arc<Notify>,
    /// Wakes workers holding a batch open for more requests (`max_wait`).
    arrivals: Arc<Notify>,
    /// Elastic services: what a request waits more while no worker is ready (the
    /// service's startup_timeout); zero for fixed ones.
    startup_grace: Duration,
    /// Wakes the service's coordinator when a request had to queue.
    demand: Arc<Notify>,
    /// Wakes whoever waits for a worker of any service to be gone (the instance's
    /// memory budget, its coordinators).
    departures: Arc<Notify>,
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Idle workers: id, command channel, idle since.
    idle: VecDeque<(u64, mpsc::UnboundedSender<Command>, Instant)>,
    /// Hand requests to the most recently idle worker first (elastic services).
    lifo: bool,
    max_queue: usize,
    closed: bool,
    /// The workers of the service (their actors are running).
    members: std::collections::BTreeSet<u64>,
    /// Workers that have asked for a request at least once: they were ready.
    ready: std::collections::BTreeSet<u64>,
    /// When a request was last queued or handed to a worker.
    last_used: Option<Instant>,
    /// Why no worker can be started for now (the memory budget): what requests
    /// that waited too long are told, instead of a bare queue timeout.
    holdup: Option<String>,
    /// A start on demand failed: why, and until when requests are told so at once.
    cold_failure: Option<(String, Instant)>,
    /// Workers that are crash-looping: why, and when they try again.
    down: std::collections::BTreeMap<u64, (String, Instant)>,
    /// The handlers the service's workers said they have (READY), once one has.
    methods: Option<Vec<String>>,
    /// Those of them the workers said may be retried.
    idempotent: Vec<String>,
    /// Batched methods and their `max_size` (the latest READY, with the config's
    /// overrides).
    batch_sizes: std::collections::BTreeMap<String, usize>,
    /// What was sent per batched method (for `status`).
    batch_stats: std::collections::BTreeMap<String, crate::status::BatchStatus>,
    depth: prometheus_client::metrics::gauge::Gauge,
    /// The expiry task's wake-up, also sent when the queue is dropped (it ends then).
    expiry: Arc<Notify>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.expiry.notify_one();
    }
}

impl Queue {
    /// The worker idle the longest: its id and since when.
    fn longest_idle(&self) -> Option<(u64, Instant)> {
        self.idle
            .iter()
            .map(|(w, _, since)| (*w, *since))
            .min_by_key(|(_, since)| *since)
    }

    /// The answer for a request while no worker can serve one soon.
    fn unavailable(&self, now: Instant) -> Option<Outcome> {
        if let Some((reason, until)) = &self.cold_failure
            && self.members.is_empty()
            && now < *until
        {
            return Some(Outcome::Unavailable {
                reason: reason.clone(),
                retry_after: until.saturating_duration_since(now),
                state: ServiceState::Unloaded,
            });
        }
        if self.members.is_empty() || self.members.iter().any(|w| !self.down.contains_key(w)) {
            return None;
        }
        let (reason, next) = self.down.values().min_by_key(|(_, at)| *at)?;
        Some(Outcome::Unavailable {
            reason: reason.clone(),
            retry_after: next.saturating_duration_since(now),
            state: ServiceState::CrashLooping,
        })
    }

    /// Gives `job` to the first idle worker still there; hands it back when none is.
    fn hand_out(&mut self, mut job: Job) -> Option<Job> {
        loop {
            let next = if self.lifo {
                self.idle.pop_back()
            } else {
                self.idle.pop_front()
            };
            let Some((_, tx, _)) = next else { break };
            match tx.send(Command::Serve(job)) {
                Ok(()) => {
                    self.last_used = Some(Instant::now());
                    return None;
                }
                // That worker is gone: try the next one.
                Err(mpsc::error::SendError(Command::Serve(j))) => job = j,
                Err(_) => unreachable!("the command sent was Serve"),
            }
        }
        Some(job)
    }

    /// Queues a job no idle worker took; true when the queue was empty before.
    fn push(&mut self, job: Job, front: bool) -> bool {
        let was_empty = self.jobs.is_empty();
        if front {
            self.jobs.push_front(job);
        } else {
            self.jobs.push_back(job);
        }
        self.depth.set(self.jobs.len() as i64);
        was_empty
    }

    /// The next request whose client still waits for it.
    fn pop_live(&mut self) -> Option<Job> {
        let mut found = None;
        while let Some(job) = self.jobs.pop_front() {
            if !job.reply.is_closed() {
                found = Some(job);
                break;
            }
        }
        self.depth.set(self.jobs.len() as i64);
        found
    }

    /// Answers 503 to every job past its queue deadline; the earliest deadline left.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        if self.jobs.iter().any(|j| j.queue_deadline <= now) {
            let (due, kept) = std::mem::take(&mut self.jobs)
                .into_iter()
                .partition::<VecDeque<_>, _>(|j| j.queue_deadline <= now);
            self.jobs = kept;
            self.depth.set(self.jobs.len() as i64);
            for job in due {
                let _ = job.reply.send(match &self.holdup {
                    Some(reason) => Outcome::Unavailable {
                        reason: reason.clone(),
                        retry_after: HOLDUP_RETRY_AFTER,
                        state: ServiceState::Unloaded,
                    },
                    None => Outcome::QueueTimeout,
                });
            }
        }
        self.jobs.iter().map(|j| j.queue_deadline).min()
    }
}

/// The `Retry-After` of a request that waited for room in the memory budget.
const HOLDUP_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Dispatcher {
    #[cfg(test)]
    pub fn start(
        service: &str,
        max_queue: usize,
        queue_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Dispatcher {
        Dispatcher::start_with(
            service,
            max_queue,
            queue_timeout,
            None,
            Arc::new(Notify::new()),
            metrics,
        )
    }

    /// `start`, for a service that is elastic when `startup_grace` is set (its
    /// startup_timeout), with the instance's `departures`.
    pub fn start_with(
        service: &str,
        max_queue: usize,
        queue_timeout: Duration,
        startup_grace: Option<Duration>,
        departures: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Dispatcher {
        let depth = metrics
            .queue_depth
            .get_or_create(&Metrics::service(service))
            .clone();
        let expiry = Arc::new(Notify::new());
        let queue = Arc::new(Mutex::new(Queue {
            jobs: VecDeque::new(),
            idle: VecDeque::new(),
            lifo: startup_grace.is_some(),
            max_queue,
            closed: false,
            members: Default::default(),
            ready: Default::default(),
            last_used: None,
            holdup: None,
            cold_failure: None,
            down: Default::default(),
            methods: None,
            idempotent: vec![],
            batch_sizes: Default::default(),
            batch_stats: Default::default(),
            depth,
            expiry: expiry.clone(),
        }));
        tokio::spawn(expire(Arc::downgrade(&queue), expiry.clone()));
        Dispatcher {
            queue,
            queue_timeout,
            expiry,
            arrivals: Arc::new(Notify::new()),
            startup_grace: startup_grace.unwrap_or_default(),
            demand: Arc::new(Notify::new()),
            departures,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing under the lock can panic half-way through a change.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a request (or gives it to an idle worker at once); its outcome
    /// arrives on the returned receiver.
    pub fn submit(
        &self,
        method: String,
        content_type: String,
        body: Bytes,
    ) -> oneshot::Receiver<Outcome> {
        self.submit_job(method, content_type, body, None)
    }

    /// `submit`, for a durable job that `abort` may cancel while a worker runs it.
    pub fn submit_job(
        &self,
        method: String,
        content_type: String,
        body: Bytes,
        abort: Option<Arc<crate::daemon::messages::Abort>>,
    ) -> oneshot::Receiver<Outcome> {
        let (reply, rx) = oneshot::channel();
        let now = Instant::now();
        let job = Job {
            method,
            content_type,
            body,
            reply,
            crashes: 0,
            queue_deadline: now + self.queue_timeout,
            received: now,
            part: None,
            abort,
        };
        let mut q = self.lock();
        if q.closed {
            let _ = job.reply.send(Outcome::ShuttingDown);
        } else if let Some(down) = q.unavailable(now) {
            let _ = job.reply.send(down);
        } else if let Some(mut job) = q.hand_out(job) {
            if q.jobs.len() >= q.max_queue {
                let _ = job.reply.send(Outcome::QueueFull);
            } else {
                // No worker is ready: the wait includes a worker's load.
                if q.ready.is_empty() {
                    job.queue_deadline += self.startup_grace;
                }
                q.last_used = Some(now);
                if q.push(job, false) {
                    self.expiry.notify_one();
                }
                drop(q);
                self.arrivals.notify_waiters();
                self.demand.notify_one();
            }
        }
        rx
    }

    /// Moves into `batch` the queued requests that may join it (the same method and
    /// bisected part as its first one, whose clients still wait), oldest first,
    /// until it holds `max` requests.
    pub fn fill_batch(&self, batch: &mut Vec<Job>, max: usize) {
        if batch.is_empty() {
            return;
        }
        let mut q = self.lock();
        let mut i = 0;
        while batch.len() < max && i < q.jobs.len() {
            let join = batch[0].batches_with(&q.jobs[i]);
            if join && !q.jobs[i].reply.is_closed() {
                let job = q.jobs.remove(i).expect("i is in range");
                batch.push(job);
            } else if q.jobs[i].reply.is_closed() {
                q.jobs.remove(i);
            } else {
                i += 1;
            }
        }
        q.depth.set(q.jobs.len() as i64);
    }

    /// A future that completes at the next request queued after this call (for a
    /// worker holding a batch open): create it, then look at the queue, then wait.
    pub fn next_arrival(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut n = Box::pin(self.arrivals.notified());
        n.as_mut().enable();
        n
    }

    /// Puts a request back at the front of the queue (its worker could not run it).
    pub fn requeue(&self, mut job: Job) {
        let grace = self.startup_grace;
        // A client that went away is not worth another worker (a crash retry could
        // crash that one too).
        if job.reply.is_closed() {
            return;
        }
        job.queue_deadline = Instant::now() + self.queue_timeout;
        let mut q = self.lock();
        if q.ready.is_empty() {
            job.queue_deadline += grace;
        }
        if q.closed {
            let _ = job.reply.send(Outcome::ShuttingDown);
        } else if let Some(down) = q.unavailable(Instant::now()) {
            let _ = job.reply.send(down);
        } else if let Some(job) = q.hand_out(job) {
            if q.push(job, true) {
                self.expiry.notify_one();
            }
            drop(q);
            self.demand.notify_one();
        }
    }

    /// Worker `wid` is idle: the next request for it, or `None`, and then it is on
    /// the idle list and the next request comes as `Command::Serve` on `tx`.
    pub fn next_for(&self, wid: u64, tx: &mpsc::UnboundedSender<Command>) -> Option<Job> {
        let mut q = self.lock();
        q.idle.retain(|(w, _, _)| *w != wid);
        q.ready.insert(wid);
        let job = q.pop_live();
        match job {
            Some(_) => q.last_used = Some(Instant::now()),
            None => q.idle.push_back((wid, tx.clone(), Instant::now())),
        }
        job
    }

    /// A worker became ready with these handlers (the latest generation's list),
    /// of which `idempotent` may be retried.
    pub fn set_methods(&self, methods: &[String], idempotent: &[String]) {
        let mut q = self.lock();
        if q.methods.as_deref() != Some(methods) {
            q.methods = Some(methods.to_vec());
        }
        if q.idempotent != idempotent {
            q.idempotent = idempotent.to_vec();
        }
    }

    /// What the service's workers announced, for the OpenAPI document.
    pub fn handlers(&self) -> crate::openapi::Handlers {
        let q = self.lock();
        crate::openapi::Handlers {
            methods: q.methods.clone().unwrap_or_default(),
            idempotent: q.idempotent.clone(),
            batched: q.batch_sizes.keys().cloned().collect(),
        }
    }

    /// The batched methods and their `max_size`, as the latest ready worker has them.
    pub fn set_batch_sizes(&self, sizes: std::collections::BTreeMap<String, usize>) {
        let mut q = self.lock();
        for (method, &size) in &sizes {
            q.batch_stats.entry(method.clone()).or_default().max_size = size;
        }
        q.batch_sizes = sizes;
    }

    /// A batch of `n` requests of `method` went to a worker.
    pub fn record_batch(&self, method: &str, n: usize) {
        let mut q = self.lock();
        let s = q.batch_stats.entry(method.to_string()).or_default();
        s.batches += 1;
        s.items += n as u64;
    }

    /// A batch of `method` was split in halves.
    pub fn record_bisection(&self, method: &str) {
        self.lock()
            .batch_stats
            .entry(method.to_string())
            .or_default()
            .bisections += 1;
    }

    /// Per batched method: its limit and what was sent.
    pub fn batch_stats(&self) -> std::collections::BTreeMap<String, crate::status::BatchStatus> {
        self.lock().batch_stats.clone()
    }

    /// The most requests of `method` one worker takes at once (1 unless batched).
    pub fn batch_size(&self, method: &str) -> usize {
        self.lock().batch_sizes.get(method).copied().unwrap_or(1)
    }

    /// The largest `max_size` of the service's batched methods (1 if none).
    pub fn largest_batch(&self) -> usize {
        self.lock().batch_sizes.values().copied().max().unwrap_or(1)
    }

    /// The service's handlers, once a worker has said.
    pub fn methods(&self) -> Option<Vec<String>> {
        self.lock().methods.clone()
    }

    /// Worker `wid`'s actor runs (until [`Dispatcher::leave`]).
    pub fn join(&self, wid: u64) {
        self.lock().members.insert(wid);
    }

    /// Worker `wid`'s actor ended.
    pub fn leave(&self, wid: u64) {
        let mut q = self.lock();
        q.members.remove(&wid);
        q.ready.remove(&wid);
        q.idle.retain(|(w, _, _)| *w != wid);
        q.down.remove(&wid);
        drop(q);
        self.departures.notify_waiters();
    }

    /// Whether worker `wid`'s actor still runs.
    pub fn is_member(&self, wid: u64) -> bool {
        self.lock().members.contains(&wid)
    }

    /// When a request was last queued or handed to a worker.
    pub fn last_used(&self) -> Option<Instant> {
        self.lock().last_used
    }

    /// The worker idle the longest: its id and since when.
    pub fn longest_idle(&self) -> Option<(u64, Instant)> {
        self.lock().longest_idle()
    }

    /// What scaling looks at, in one look: the requests waiting for a worker,
    /// and the worker idle the longest.
    pub fn load(&self) -> (usize, Option<(u64, Instant)>) {
        let q = self.lock();
        (q.jobs.len(), q.longest_idle())
    }

    /// Takes worker `wid` off the idle list, so that no request is handed to it
    /// again: its command channel, to stop it. None when it is not idle (it serves,
    /// or is gone).
    pub fn take_idle(&self, wid: u64) -> Option<(u64, mpsc::UnboundedSender<Command>)> {
        let mut q = self.lock();
        let i = q.idle.iter().position(|(x, _, _)| *x == wid)?;
        let (w, tx, _) = q.idle.remove(i)?;
        Some((w, tx))
    }

    /// Why no worker can start for now (None: it can); requests that wait past
    /// their deadline are told this.
    pub fn set_holdup(&self, why: Option<String>) {
        self.lock().holdup = why;
    }

    /// A start on demand failed with `reason`: what is queued is answered 503 with
    /// it, and so is every request until `until` while no worker runs.
    pub fn fail_start(&self, reason: String, until: Instant) {
        let mut q = self.lock();
        q.cold_failure = Some((reason.clone(), until));
        let retry_after = until.saturating_duration_since(Instant::now());
        answer_queued(q, || Outcome::Unavailable {
            reason: reason.clone(),
            retry_after,
            state: ServiceState::Unloaded,
        });
    }

    /// A worker started on demand is ready: earlier failures no longer answer.
    pub fn clear_failure(&self) {
        self.lock().cold_failure = None;
    }

    /// A future that completes at the next request that has to queue (the
    /// coordinator's cue to start a worker).
    pub fn demand(&self) -> tokio::sync::futures::Notified<'_> {
        self.demand.notified()
    }

    /// Worker `wid` is crash-looping (`Some`: why, and its next try) or back up.
    /// When that leaves no worker that may serve soon, what is queued is answered.
    pub fn set_down(&self, wid: u64, down: Option<(String, Instant)>) {
        let mut q = self.lock();
        match down {
            Some(d) => {
                q.down.insert(wid, d);
            }
            None => {
                q.down.remove(&wid);
                return;
            }
        }
        let Some(Outcome::Unavailable {
            reason,
            retry_after,
            state,
        }) = q.unavailable(Instant::now())
        else {
            return;
        };
        answer_queued(q, || Outcome::Unavailable {
            reason: reason.clone(),
            retry_after,
            state,
        });
    }

    /// Answers everything queued with 503 and stops taking requests.
    pub fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        answer_queued(q, || Outcome::ShuttingDown);
    }
}

/// The expiry task: sleeps until the earliest queue deadline (or until the queue
/// gets its first job) and answers what waited too long. It ends with its queue.
async fn expire(queue: Weak<Mutex<Queue>>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(q) = queue.upgrade() else { return };
            let mut q = q.lock().unwrap_or_else(|e| e.into_inner());
            q.expire(Instant::now())
        };
        match next {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {}
                    _ = wake.notified() => {}
                }
            }
            // The queue is empty: wait for a job, or for the queue to be dropped.
            None => wake.notified().await,
        }
    }
}

/// Empties the queue held by `q` and, once the lock is let go, answers every
/// request that was in it with `outcome()`.
fn answer_queued(mut q: MutexGuard<'_, Queue>, outcome: impl Fn() -> Outcome) {
    let jobs = std::mem::take(&mut q.jobs);
    q.depth.set(0);
    drop(q);
    for job in jobs {
        let _ = job.reply.send(outcome());
    }
}
