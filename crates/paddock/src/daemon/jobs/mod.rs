//! Durable jobs: `POST /v1/jobs/{service}` queues work that runs on the service's own
//! workers, through the same handlers as online requests, and survives worker
//! crashes and daemon crashes.
//!
//! Semantics (see docs/jobs.md): at-least-once. queued → running → done; a failed
//! attempt goes back to queued after a backoff, and after `max_attempts` failed
//! attempts the job is dead. Each attempt's cause is recorded. A result is committed
//! in the same transaction that marks the job done, so a done job never runs again.
//!
//! The store is SQLite (one thread owns the connection) or PostgreSQL. Either way
//! the store is opened only after the daemon forked, and it has one model: the
//! lifecycle in `state.rs`, the rules in `apply.rs`, the group-commit loop in
//! `group_commit.rs`, the row mapping in `row.rs`; `sqlite.rs` and `postgres.rs` hold only
//! their dialect's SQL, their connections and (PostgreSQL) leases.

mod apply;
mod error;
pub mod finishes;
mod group_commit;
mod row;
mod schema;
mod state;
pub use error::StoreError;
pub use sqlite::compact_offline;
pub use state::JobState;
pub mod postgres;
pub mod prune;
pub mod pump;
pub mod schedule;
pub mod size;
pub mod sqlite;
pub mod stats;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// One job, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobView {
    pub id: String,
    pub seq: i64,
    pub service: String,
    pub method: String,
    pub state: JobState,
    /// Times it was started.
    pub attempts: u32,
    /// Attempts that failed (they count towards max_attempts).
    pub failures: u32,
    pub max_attempts: u32,
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// When a queued or scheduled job may run next (its time, or after a backoff).
    pub run_after: String,
    /// Claims take higher priorities first, then the oldest.
    pub priority: i32,
    /// Every attempt's end: {"attempt", "at", "outcome", "cause"}.
    pub history: serde_json::Value,
    pub result_content_type: Option<String>,
    /// The daemon running it (`host:pid@start-time`), while it runs.
    pub owner: Option<String>,
}

/// A job handed to the pump to run.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    /// The job's row (`seq`): how its start is recorded without an index lookup.
    pub seq: i64,
    pub method: String,
    pub content_type: String,
    pub body: Vec<u8>,
    /// Failed attempts so far (for the backoff).
    pub failures: u32,
    /// Higher runs first (claims are handed over in this order, then by `seq`).
    pub priority: i32,
    /// This claim's number: the job's `claims` count, which every claim and every
    /// take-over raises by one. Every outcome of the attempt names it, and the store
    /// records the outcome only while the job's count is still this number (the
    /// fencing token of the claim).
    pub claim: i64,
}

/// What the pump records of a job it claimed: that a worker has it now (`Start`),
/// or how the attempt ended. Each is written in a later group again until it
/// commits (group_commit.rs).
#[derive(Debug, Clone)]
pub enum Finish {
    /// Handed to a worker: the job is `running` and an attempt is counted. Until
    /// then it is `claimed` and can still be cancelled. `seq`: its row.
    Start {
        seq: i64,
    },
    Done {
        content_type: String,
        body: Vec<u8>,
    },
    /// The attempt failed; `permanent` skips further attempts (no such handler).
    Failed {
        cause: serde_json::Value,
        permanent: bool,
        backoff_ms: u64,
    },
    /// The attempt never reached a worker (queue full, no worker can serve): back to
    /// the queue without counting, claimable again after `after_ms`.
    Release {
        why: String,
        after_ms: u64,
    },
    /// The daemon stopped while the job was with it: back to the queue, recorded in
    /// its history as interrupted, not counted as a failed attempt.
    Interrupted {
        why: String,
    },
}

/// A new job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub service: String,
    pub method: String,
    pub content_type: String,
    pub body: Vec<u8>,
    pub idempotency_key: Option<String>,
    pub max_attempts: u32,
    /// Not claimed before this instant (ms since the epoch): `delay` or `run_at`.
    /// A job with a time in the future is `scheduled`, else `queued`.
    pub run_after_ms: Option<i64>,
    /// Higher first; 0 by default.
    pub priority: i32,
}

/// A page of jobs and the `after` of the next page.
pub type Page = (Vec<JobView>, Option<i64>);

/// What the list endpoint filters on; any other parameter is a 400.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<String>,
    pub service: Option<String>,
    pub limit: Option<u32>,
    /// Only jobs with a larger `seq` (the previous page's `next`).
    pub after: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no job {0}")]
    NotFound(String),
    #[error("job {id} is {state}: {what}")]
    Conflict {
        id: String,
        state: JobState,
        what: String,
    },
    #[error("job store: {0}")]
    Store(#[from] StoreError),
    /// An Idempotency-Key sent again with a different request (as Stripe: 409).
    #[error(
        "Idempotency-Key {key:?} was first used for job {id} with a different request (method, content type or body); use a new key for a new request"
    )]
    KeyReused { key: String, id: String },
}

impl NewJob {
    /// Whether a stored job with this key is this very request (a retry).
    pub fn same_request(&self, method: &str, content_type: &str, body: &[u8]) -> bool {
        self.method == method && self.content_type == content_type && self.body == body
    }
}

/// A request to the store.
pub enum Cmd {
    Enqueue(NewJob, oneshot::Sender<Result<(JobView, bool), JobError>>),
    Claim {
        service: String,
        limit: usize,
        reply: oneshot::Sender<Vec<Claimed>>,
    },
    /// Records an attempt's outcome: `claim` is the number of the claim that ran it
    /// ([`Claimed::claim`]); under any later claim of the job it changes nothing.
    Finish {
        id: String,
        claim: i64,
        finish: Finish,
    },
    Get(String, oneshot::Sender<Result<JobView, JobError>>),
    Result(String, oneshot::Sender<Result<(String, Vec<u8>), JobError>>),
    Cancel(String, oneshot::Sender<Result<JobView, JobError>>),
    Retry(String, oneshot::Sender<Result<JobView, JobError>>),
    List(ListQuery, oneshot::Sender<Result<Page, JobError>>),
    /// Answered once everything sent before it is committed.
    Sync(oneshot::Sender<()>),
    /// Deletes up to `limit` finished jobs of `service` that finished before
    /// `before_ms`; answers how many.
    Prune {
        service: String,
        before_ms: i64,
        limit: usize,
        reply: oneshot::Sender<u64>,
    },
    /// Gives some freed pages back to the file system (SQLite: one step of
    /// incremental vacuum outside any transaction, and a WAL checkpoint once none
    /// are left); answers how many free pages are left (0: done).
    Compact(oneshot::Sender<u64>),
    /// Jobs by service and state, oldest finished jobs, the store's size.
    Stats(oneshot::Sender<Result<stats::StoreStats, JobError>>),
    /// The space the jobs take (what `job_store_max_size` bounds); None when it
    /// could not be read.
    Size(oneshot::Sender<Option<u64>>),
    /// A schedule's tick: enqueues `job` unless this tick was enqueued already (by
    /// this daemon or another); answers the new job's id, or None.
    Tick(Tick, oneshot::Sender<Result<Option<String>, JobError>>),
    /// The latest tick of a schedule that was enqueued (ms since the epoch).
    LastTick {
        service: String,
        schedule: String,
        reply: oneshot::Sender<Result<Option<i64>, JobError>>,
    },
}

/// One tick of a periodic job.
#[derive(Debug, Clone)]
pub struct Tick {
    pub schedule: String,
    pub tick_ms: i64,
    pub job: NewJob,
}

/// A handle to the job store's group loop (on the SQLite thread or the PostgreSQL
/// task), and to the table of clients waiting for jobs to finish.
#[derive(Clone)]
pub struct Store {
    tx: tokio::sync::mpsc::UnboundedSender<Cmd>,
    finishes: std::sync::Arc<finishes::Finishes>,
    /// Why the store cannot be reached now (PostgreSQL, while it reconnects).
    outage: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Store {
    /// A store fed through `tx`, whose commit loop wakes `finishes`.
    fn new(
        tx: tokio::sync::mpsc::UnboundedSender<Cmd>,
        finishes: std::sync::Arc<finishes::Finishes>,
    ) -> Store {
        Store {
            tx,
            finishes,
            outage: Default::default(),
        }
    }

    /// This store's outage, as its dialect reports it.
    fn with_outage(mut self, outage: std::sync::Arc<std::sync::Mutex<Option<String>>>) -> Store {
        self.outage = outage;
        self
    }

    /// Why the store cannot be reached now, if it cannot.
    pub fn outage(&self) -> Option<String> {
        self.outage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Registers a wait for job `id` to finish (before reading it: see
    /// `finishes.rs`).
    pub fn wait_for(&self, id: &str) -> finishes::Waiter {
        self.finishes.wait_for(id)
    }

    /// Clients waiting for a job right now.
    pub fn waiting(&self) -> usize {
        self.finishes.waiting()
    }

    pub(super) fn send(&self, c: Cmd) -> Result<(), JobError> {
        self.tx
            .send(c)
            .map_err(|_| JobError::Store(StoreError::Unreachable("the job store is closed".into())))
    }

    pub async fn enqueue(&self, job: NewJob) -> Result<(JobView, bool), JobError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Enqueue(job, tx))?;
        rx.await.map_err(|_| {
            JobError::Store(StoreError::Unreachable("the job store is closed".into()))
        })?
    }

    pub async fn claim(&self, service: &str, limit: usize) -> Vec<Claimed> {
        let (reply, rx) = oneshot::channel();
        if self
            .send(Cmd::Claim {
                service: service.into(),
                limit,
                reply,
            })
            .is_err()
        {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }

    /// Records how the attempt of `job`'s claim went (fire and forget: the store
    /// writes it again until it commits).
    pub fn finish(&self, job: &Claimed, finish: Finish) {
        let _ = self.send(Cmd::Finish {
            id: job.id.clone(),
            claim: job.claim,
            finish,
        });
    }

    pub async fn get(&self, id: String) -> Result<JobView, JobError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Get(id, tx))?;
        rx.await.map_err(|_| {
            JobError::Store(StoreError::Unreachable("the job store is closed".into()))
        })?
    }

    pub async fn result(&self, id: String) -> Result<(String, Vec<u8>), JobError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Result(id, tx))?;
        rx.await.map_err(|_| {
            JobError::Store(StoreError::Unreachable("the job store is closed".into()))
        })?
    }

    pub async fn cancel(&self, id: String) -> Result<JobView, JobError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Cancel(id, tx))?;
        rx.await.map_err(|_| {
            JobError::Store(StoreError::Unreachable("the job store is closed".into()))
        })?
    }

    pub async fn retry(&self, id: String) -> Result<JobView, JobError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Retry(id, tx))?;
        rx.await.map_err(|_| {
            JobError::Store(StoreError::Unreachable("the job store is closed".into()))
        })?
    }

    /// Waits until every command sent so far is committed.
    pub async fn sync(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Cmd::Sync(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Deletes up to `limit` finished jobs of `service` older than `before_ms`; how
    /// many (0 when the store is gone or failed).
    pub async fn prune(&self, service: &str, before_ms: i64, limit: usize) -> u64 {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Prune {
            service: service.into(),
            before_ms,
            limit,
            reply,
        };
        if self.send(cmd).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Gives some freed space back (SQLite); how many free pages are left (0 when
    /// done, and always on PostgreSQL, where autovacuum does this).
    pub async fn compact_step(&self) -> u64 {
        let (tx, rx) = oneshot::channel();
        if self.send(Cmd::Compact(tx)).is_ok() {
            rx.await.unwrap_or(0)
        } else {
            0
        }
    }

    /// The space the jobs take (see `Cmd::Size`); None when it could not be read.
    pub async fn size(&self) -> Option<u64> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Size(tx)).ok()?;
        rx.await.ok().flatten()
    }

    /// Enqueues a schedule's tick once across every daemon of the store; the new
    /// job's id, or None when the tick was enqueued already.
    pub async fn tick(&self, tick: Tick) -> Result<Option<String>, JobError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Tick(tick, tx))?;
        rx.await.map_err(|_| {
            JobError::Store(StoreError::Unreachable("the job store is closed".into()))
        })?
    }

    /// The latest enqueued tick of a schedule.
    pub async fn last_tick(&self, service: &str, schedule: &str) -> Result<Option<i64>, JobError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::LastTick {
            service: service.into(),
            schedule: schedule.into(),
            reply,
        })?;
        rx.await.map_err(|_| {
            JobError::Store(StoreError::Unreachable("the job store is closed".into()))
        })?
    }

    pub async fn list(&self, q: ListQuery) -> Result<Page, JobError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::List(q, tx))?;
        rx.await.map_err(|_| {
            JobError::Store(StoreError::Unreachable("the job store is closed".into()))
        })?
    }
}

/// Sends a command's answer once its group's commit is known: the value when the
/// commit succeeded, the commit's error otherwise.
type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

fn reply<T: Send + 'static>(
    tx: oneshot::Sender<Result<T, JobError>>,
    value: Result<T, JobError>,
) -> Reply {
    Box::new(move |commit_err| {
        let _ = tx.send(match commit_err {
            Some(e) => Err(JobError::Store(e.clone())),
            None => value,
        });
    })
}

/// Hands claimed jobs over once the claim is committed (none if it was not).
fn claim_reply(tx: oneshot::Sender<Vec<Claimed>>, claimed: Vec<Claimed>) -> Reply {
    Box::new(move |commit_err| {
        let _ = tx.send(if commit_err.is_some() {
            vec![]
        } else {
            claimed
        });
    })
}

/// The reply of a command that was never applied (its transaction could not
/// begin): its caller hears the group's error.
fn refused(cmd: Cmd) -> Reply {
    let not_applied = || JobError::Store("not applied".into());
    match cmd {
        Cmd::Enqueue(_, r) => reply(r, Err(not_applied())),
        Cmd::Claim { reply: r, .. } => claim_reply(r, vec![]),
        Cmd::Finish { .. } => Box::new(|_| {}),
        Cmd::Get(_, r) | Cmd::Cancel(_, r) | Cmd::Retry(_, r) => reply(r, Err(not_applied())),
        Cmd::Result(_, r) => reply(r, Err(not_applied())),
        Cmd::List(_, r) => reply(r, Err(not_applied())),
        Cmd::Sync(r) => Box::new(move |_| {
            let _ = r.send(());
        }),
        Cmd::Compact(r) => Box::new(move |_| {
            let _ = r.send(0);
        }),
        Cmd::Stats(r) => reply(r, Err(not_applied())),
        Cmd::Size(r) => Box::new(move |_| {
            let _ = r.send(None);
        }),
        Cmd::Prune { reply, .. } => Box::new(move |_| {
            let _ = reply.send(0);
        }),
        Cmd::Tick(_, r) => reply(r, Err(not_applied())),
        Cmd::LastTick { reply: r, .. } => reply(r, Err(not_applied())),
    }
}

/// A page of at most `limit` jobs from `jobs` (queried with `limit + 1` rows), and
/// the `after` of the next page when there is one.
fn page(mut jobs: Vec<JobView>, limit: i64) -> Page {
    let next = if jobs.len() as i64 > limit {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| j.seq)
    } else {
        None
    };
    (jobs, next)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn ms_to_rfc3339(ms: i64) -> String {
    crate::timefmt::rfc3339(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
}

/// A new job id: milliseconds and randomness, sortable by creation time.
pub fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms() as u64);
    format!("j{:011x}{:016x}", now_ms(), h.finish())
}
