//! The job pump: one task per worker service that claims queued jobs from the store
//! and runs them on the service's workers, through the dispatcher, like online
//! requests.
//!
//! Invariants:
//! - jobs occupy at most `max(1, round(workers × jobs_share))` workers at once, so
//!   online requests always have the rest of the service's capacity. A job to a
//!   batched method occupies `1 / max_size` of a worker (a batch of them fills one
//!   worker), any other job a whole worker;
//! - claims are made in batches (prefetch) and completions are grouped by the store,
//!   so the store's fsyncs are shared by many jobs. A claim runs beside the pump's
//!   work, not instead of it: the jobs already claimed keep going to workers while
//!   the next batch is claimed (a PostgreSQL claim takes a few milliseconds, in
//!   which two workers finish many no-op jobs). A pump claims only while one of its
//!   job slots is free: what fills the free slots and a batch per slot more, or
//!   50 ms of its recent rate of finished jobs if that is more. Short jobs are
//!   claimed by the hundred, long ones a few at a time, and a daemon whose slots
//!   are all busy claims nothing, so an idle daemon of the cluster starts what is
//!   enqueued meanwhile;
//! - every claimed job is finished exactly once: done, failed (with its cause),
//!   released back to the queue if it never reached a worker, or dropped unrun when
//!   it was cancelled while claimed;
//! - a claimed job becomes `running` (an attempt counted) only as it is handed to a
//!   worker (`Finish::Start`); a cancel while it runs reaches its worker through the
//!   job's `Abort` (the stream is stopped, or the worker killed and replaced), and
//!   whatever the attempt then reports is dropped by the store (the job is
//!   `cancelled` there already).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};

use super::{Claimed, Finish, Store};
use crate::config::Service;
use crate::daemon::dispatch::Dispatcher;
use crate::daemon::failure::{self, Then, Verdict};
use crate::daemon::messages::{Abort, Outcome};

/// How the rest of the daemon reaches a service's pump: there is work to claim
/// (an enqueue, a retry, a notification from another daemon), or a job it may hold
/// claimed ahead was cancelled (the pump drops it unrun).
#[derive(Clone)]
pub struct Signals {
    wake: Arc<Notify>,
    cancelled: mpsc::UnboundedSender<String>,
}

impl Signals {
    pub fn new() -> (Signals, mpsc::UnboundedReceiver<String>) {
        let (cancelled, rx) = mpsc::unbounded_channel();
        (
            Signals {
                wake: Arc::new(Notify::new()),
                cancelled,
            },
            rx,
        )
    }

    /// There may be new work to claim.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Job `id` was cancelled: if the pump holds it claimed, it drops it.
    pub fn cancelled(&self, id: String) {
        let _ = self.cancelled.send(id);
    }
}

/// A claim the pump made and has not heard back from: how many it asked for, and
/// what it got.
type ClaimUnderWay = std::pin::Pin<Box<dyn Future<Output = (usize, Vec<Claimed>)> + Send>>;

/// Jobs claimed ahead cover this much of the service's recent rate of finished
/// jobs: a claim's round trip to PostgreSQL is a few milliseconds, in which two
/// workers finish dozens of short jobs. Long jobs are not claimed far ahead, so a
/// busy daemon does not hold jobs an idle one could run.
const PREFETCH_COVERS: Duration = Duration::from_millis(50);

/// The most jobs claimed ahead.
const PREFETCH_MAX: usize = 256;

/// How many jobs to hold claimed: enough for `PREFETCH_COVERS` of the recent
/// rate, at least `floor` (what fills the free job slots, and a batch per slot
/// more), at most `PREFETCH_MAX`.
fn prefetch(rate_per_s: f64, floor: usize) -> usize {
    let covers = (rate_per_s * PREFETCH_COVERS.as_secs_f64()).ceil() as usize;
    covers.clamp(floor, PREFETCH_MAX.max(floor))
}

/// How many jobs may be with workers at once.
pub fn capacity(service: &Service) -> usize {
    ((service.workers as f64 * service.jobs_share).round() as usize).max(1)
}

pub fn start(
    service: Arc<Service>,
    store: Store,
    dispatcher: Dispatcher,
    signals: (Signals, mpsc::UnboundedReceiver<String>),
    shutdown: watch::Receiver<bool>,
    expose_errors: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(
        service,
        store,
        dispatcher,
        signals,
        shutdown,
        expose_errors,
    ))
}

async fn run(
    service: Arc<Service>,
    store: Store,
    dispatcher: Dispatcher,
    (signals, mut cancelled): (Signals, mpsc::UnboundedReceiver<String>),
    mut shutdown: watch::Receiver<bool>,
    expose_errors: bool,
) {
    let Signals { wake, .. } = signals;
    let cap = capacity(&service);
    let mut buffer: VecDeque<Claimed> = VecDeque::new();
    // Workers occupied, in shares of a worker (see the module's invariants).
    let mut in_flight = 0usize;
    let mut occupied = 0f64;
    let mut maybe_more = true;
    let mut next_tick = std::time::Instant::now() + Duration::from_millis(250);
    // Jobs finished per second, smoothed over the 250 ms ticks.
    let (mut rate, mut finished, mut window) = (0f64, 0usize, std::time::Instant::now());
    // The claim under way (how many it asked for, and its answer), and the jobs
    // cancelled meanwhile: its answer may hold them.
    let mut claiming: Option<ClaimUnderWay> = None;
    let mut cancelled_meanwhile: Vec<String> = vec![];
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(f64, String, Arc<Abort>)>();
    // The jobs workers have now, by id: how a cancel reaches the one running it.
    let mut running: HashMap<String, Arc<Abort>> = HashMap::new();
    loop {
        if *shutdown.borrow() {
            // A claim under way was committed or will be: its jobs go back too.
            if let Some(c) = claiming.take() {
                buffer.extend(c.await.1);
            }
            for job in buffer.drain(..) {
                store.finish(
                    &job,
                    Finish::Release {
                        why: "the daemon is stopping".into(),
                        after_ms: 0,
                    },
                );
            }
            // Jobs with workers are answered by the dispatcher (503 on shutdown) and
            // released by their tasks.
            return;
        }
        // Enough claimed to fill the free job slots and a batch per slot more,
        // plus what keeps them busy while the next claim is made; nothing while
        // every slot is taken.
        let batch = dispatcher.largest_batch();
        let free = ((cap as f64 - occupied).max(0.0) * batch as f64 + 1e-9).floor() as usize;
        let target = prefetch(rate, free + cap * batch);
        if maybe_more && claiming.is_none() && free > 0 && buffer.len() < target.div_ceil(2) {
            let want = target - buffer.len();
            let (store, name) = (store.clone(), service.name.to_string());
            claiming = Some(Box::pin(
                async move { (want, store.claim(&name, want).await) },
            ));
        }
        while let Some(next) = buffer.front() {
            let share = 1.0 / dispatcher.batch_size(&next.method) as f64;
            if occupied + share > cap as f64 + 1e-9 {
                break;
            }
            let job = buffer.pop_front().expect("front exists");
            in_flight += 1;
            occupied += share;
            // From here a worker has it: `running`, an attempt counted.
            store.finish(&job, Finish::Start { seq: job.seq });
            let abort = Arc::new(Abort::default());
            running.insert(job.id.clone(), abort.clone());
            let rx = dispatcher.submit_job(
                job.method.clone(),
                job.content_type.clone(),
                job.body.clone().into(),
                Some(abort.clone()),
            );
            let store = store.clone();
            let done = done_tx.clone();
            let backoff = service.job_backoff;
            let max_result = service.job_max_result;
            let service_name = service.name.to_string();
            tokio::spawn(async move {
                let outcome = whole(rx.await.unwrap_or(Outcome::ShuttingDown)).await;
                let finish = match outcome {
                    // A result over job_max_result is not stored, and the same
                    // handler would make it again: the job fails now, not after
                    // max_attempts runs of it.
                    Outcome::Ok { body, .. } if body.len() as u64 > max_result => {
                        too_large(body.len(), max_result)
                    }
                    o => finish_of(o, &job, backoff, expose_errors, &service_name),
                };
                store.finish(&job, finish);
                let _ = done.send((share, job.id, abort));
            });
        }
        tokio::select! {
            (want, got) = async { claiming.as_mut().expect("the branch needs a claim").await }, if claiming.is_some() => {
                claiming = None;
                maybe_more = got.len() == want;
                // Cancelled while the claim was under way: dropped unrun.
                buffer.extend(got.into_iter().filter(|j| !cancelled_meanwhile.contains(&j.id)));
                cancelled_meanwhile.clear();
            }
            Some((share, id, abort)) = done_rx.recv() => {
                in_flight -= 1;
                finished += 1;
                occupied -= share;
                forget(&mut running, &id, &abort);
                while let Ok((share, id, abort)) = done_rx.try_recv() {
                    in_flight -= 1;
                    finished += 1;
                    occupied -= share;
                    forget(&mut running, &id, &abort);
                }
                if in_flight == 0 {
                    occupied = 0.0; // no float error accumulates across bursts
                }
            }
            _ = wake.notified() => maybe_more = true,
            Some(id) = cancelled.recv() => {
                // Claimed ahead, no worker yet: it is cancelled in the store, so it
                // is not run (nor released: it is no longer this pump's). Running:
                // its worker is told.
                buffer.retain(|j| j.id != id);
                if let Some(abort) = running.get(&id) {
                    abort.request();
                }
                if claiming.is_some() {
                    cancelled_meanwhile.push(id);
                }
            }
            // Jobs waiting out a backoff (or a dead node's lease) become due without
            // anyone enqueuing. A fixed instant: a stream of completions must not
            // keep postponing it.
            _ = tokio::time::sleep_until(next_tick.into()) => {
                let now = std::time::Instant::now();
                next_tick = now + Duration::from_millis(250);
                let measured = finished as f64 / now.duration_since(window).as_secs_f64().max(1e-3);
                rate = if rate == 0.0 { measured } else { 0.5 * rate + 0.5 * measured };
                (finished, window) = (0, now);
                maybe_more = true;
            }
            _ = shutdown.changed() => {}
        }
    }
}

/// The longest a job that found no worker able to serve waits before its next claim.
const RELEASE_AFTER_MAX: Duration = Duration::from_secs(60);

/// A streamed answer as one: its chunks concatenated (a job stores the whole
/// result), or the failure that ended it.
async fn whole(outcome: Outcome) -> Outcome {
    use crate::daemon::messages::StreamItem;
    let Outcome::Stream {
        content_type,
        mut items,
    } = outcome
    else {
        return outcome;
    };
    let mut body = vec![];
    loop {
        match items.recv().await {
            Some(StreamItem::Chunk(c)) => body.extend_from_slice(&c),
            Some(StreamItem::Done) => return Outcome::Ok { content_type, body },
            Some(StreamItem::Failed { message, .. }) => {
                return Outcome::Refused {
                    status: 500,
                    message: format!("the stream failed: {message}"),
                };
            }
            None => {
                return Outcome::Refused {
                    status: 500,
                    message: "the stream was cut off before its end".into(),
                };
            }
        }
    }
}

/// A result over `job_max_result`: a permanent failure (a retry gives the same
/// result), saying the size and the setting.
fn too_large(size: usize, max_result: u64) -> Finish {
    Finish::Failed {
        cause: json!({
            "kind": "result_too_large",
            "message": format!(
                "the result is {size} bytes, over the service's job_max_result ({max_result} bytes); a retry would make the same result, so the job is not retried"
            ),
            "size": size,
            "job_max_result": max_result,
        }),
        permanent: true,
        backoff_ms: 0,
    }
}

/// The record of an attempt's end, from the table in `daemon::failure` (the same
/// that answers an HTTP client). `expose`: the instance's `expose_errors`
/// (tracebacks and a crashed worker's last log lines in the job's history);
/// `service`: the job's service.
pub fn finish_of(
    outcome: Outcome,
    job: &Claimed,
    backoff: Duration,
    expose: bool,
    service: &str,
) -> Finish {
    let backoff_ms = (backoff.as_millis() as u64)
        .saturating_mul(1u64 << job.failures.min(20))
        .min(300_000);
    // The messages name no setting a job shows, so the limits are left at zero.
    let ctx = failure::Context {
        service,
        method: &job.method,
        expose,
        request_timeout: Duration::ZERO,
        max_queue: 0,
        queue_timeout: Duration::ZERO,
    };
    match failure::of(outcome, &ctx) {
        Verdict::Answer { content_type, body } => Finish::Done { content_type, body },
        // `whole` makes every stream one answer before this; never seen here.
        Verdict::Stream { .. } => Finish::Failed {
            cause: json!({"kind": "stream_not_collected"}),
            permanent: false,
            backoff_ms,
        },
        Verdict::Failed(f) => match f.then {
            Then::Retry => Finish::Failed {
                cause: f.job_cause,
                permanent: false,
                backoff_ms,
            },
            Then::GiveUp => Finish::Failed {
                cause: f.job_cause,
                permanent: true,
                backoff_ms: 0,
            },
            // Back when the service may serve again (a crash loop's next try, a
            // failed service's hour), but looked at again within a minute at most:
            // never claimed and released in a loop.
            Then::Requeue(why) => Finish::Release {
                why,
                after_ms: f
                    .retry_after
                    .map_or(0, |d| d.min(RELEASE_AFTER_MAX).as_millis() as u64),
            },
            Then::Interrupted(why) => Finish::Interrupted { why },
        },
    }
}

/// Forgets a finished attempt's cancel, unless the job runs again meanwhile (a
/// retry claimed before this attempt's end was heard): that one's stays.
fn forget(running: &mut HashMap<String, Arc<Abort>>, id: &str, abort: &Arc<Abort>) {
    if running.get(id).is_some_and(|a| Arc::ptr_eq(a, abort)) {
        running.remove(id);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_jobs_are_claimed_far_ahead_and_long_ones_only_a_few() {
        // 5,000 jobs a second: 50 ms of them.
        assert_eq!(super::prefetch(5000.0, 1), 250);
        assert_eq!(super::prefetch(50_000.0, 1), super::PREFETCH_MAX);
        // Ten-second jobs, or none finished yet: one for each free slot.
        assert_eq!(super::prefetch(0.2, 2), 2);
        assert_eq!(super::prefetch(0.0, 1), 1);
        // A floor above the most is kept (many workers, large batches).
        assert_eq!(super::prefetch(0.0, 1024), 1024);
    }
}
