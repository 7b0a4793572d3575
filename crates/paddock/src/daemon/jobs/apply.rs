//! What each store command does, written once for both stores over [`Tx`]: a
//! dialect supplies the statements (its SQL, its leases), this module the rules —
//! idempotency keys, which state a result needs, conflicts, pages, the order of
//! claimed jobs.

use super::state::Transition;
use super::stats::StoreStats;
use super::{
    Claimed, Cmd, Finish, JobError, JobState, JobView, ListQuery, NewJob, Page, Reply, StoreError,
    claim_reply, new_id, now_ms, page, reply,
};

/// A job as first enqueued under an Idempotency-Key: its id, method, content type
/// and body.
pub(super) type Keyed = (String, String, String, Vec<u8>);

/// A stored result: the job's state, its result's content type and body.
pub(super) type Stored = (JobState, Option<String>, Option<Vec<u8>>);

/// A change the API asks for (`POST /v1/jobs/{id}/cancel`, `…/retry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ApiChange {
    Cancel,
    Retry,
}

impl ApiChange {
    pub(super) fn transition(self) -> Transition {
        match self {
            ApiChange::Cancel => Transition::Cancel,
            ApiChange::Retry => Transition::Retry,
        }
    }
}

/// The statements of one dialect, run inside the group's open transaction.
pub(super) trait Tx {
    /// The job with this id.
    async fn get(&self, id: &str) -> Result<Option<JobView>, JobError>;
    /// The job of `service` enqueued with this Idempotency-Key.
    async fn by_key(&self, service: &str, key: &str) -> Result<Option<Keyed>, JobError>;
    /// Inserts `job` as queued; false when another daemon inserted a job with the
    /// same key first.
    async fn insert(&self, id: &str, job: &NewJob, now: i64) -> Result<bool, JobError>;
    /// Claims up to `limit` jobs of `service` for this daemon, with their `seq`.
    async fn claim(&self, service: &str, limit: usize) -> Result<Vec<(i64, Claimed)>, StoreError>;
    /// Records the outcome of the attempt that claim number `claim` of job `id`
    /// ran; how many jobs it changed (0: the job is no longer under that claim:
    /// cancelled, or taken over and perhaps claimed again since).
    async fn finish(&self, id: &str, claim: i64, finish: Finish) -> Result<u64, StoreError>;
    /// A job's state and result.
    async fn result(&self, id: &str) -> Result<Option<Stored>, JobError>;
    /// Applies an API change; how many jobs it changed.
    async fn change(&self, id: &str, c: ApiChange) -> Result<u64, JobError>;
    /// Deletes up to `limit` finished jobs of `service` that finished before
    /// `before_ms`; how many.
    async fn prune(&self, service: &str, before_ms: i64, limit: usize) -> Result<u64, StoreError>;
    /// Jobs by service and state, each service's oldest finished job, the size.
    async fn stats(&self) -> Result<StoreStats, JobError>;
    /// The space the jobs take: SQLite's pages in use (the WAL's included, free
    /// pages not), PostgreSQL's table with its indexes and TOAST.
    async fn size(&self) -> Result<u64, StoreError>;
    /// Jobs selected by `q`, at most `limit` of them, by `seq`.
    async fn list(&self, q: &ListQuery, limit: i64) -> Result<Vec<JobView>, JobError>;
    /// Records a schedule's tick with the job it enqueues; false when it was
    /// recorded already.
    async fn tick(
        &self,
        service: &str,
        schedule: &str,
        tick_ms: i64,
        job_id: &str,
    ) -> Result<bool, JobError>;
    /// The latest recorded tick of a schedule.
    async fn last_tick(&self, service: &str, schedule: &str) -> Result<Option<i64>, JobError>;
}

/// Applies one command; its reply waits for the group's commit.
pub(super) async fn apply(tx: &impl Tx, cmd: Cmd) -> Reply {
    match cmd {
        Cmd::Enqueue(job, r) => reply(r, enqueue(tx, job).await),
        Cmd::Claim {
            service,
            limit,
            reply,
        } => {
            let claimed = match tx.claim(&service, limit).await {
                Ok(rows) => in_claim_order(rows),
                Err(e) => {
                    tracing::error!("claiming jobs of {service}: {e}");
                    vec![]
                }
            };
            claim_reply(reply, claimed)
        }
        Cmd::Finish { id, claim, finish } => {
            let start = matches!(finish, Finish::Start { .. });
            match tx.finish(&id, claim, finish).await {
                // Cancelled while it waited for a worker, an instant before it got one.
                Ok(0) if start => tracing::info!("{}", unstarted(&id, claim)),
                Ok(0) => tracing::warn!("{}", dropped(&id, claim)),
                Ok(_) => {}
                Err(e) => tracing::error!("finishing job {id}: {e}"),
            }
            Box::new(|_| {})
        }
        Cmd::Get(id, r) => reply(r, get(tx, &id).await),
        Cmd::Result(id, r) => reply(r, result(tx, &id).await),
        Cmd::Cancel(id, r) => reply(r, change(tx, &id, ApiChange::Cancel).await),
        Cmd::Retry(id, r) => reply(r, change(tx, &id, ApiChange::Retry).await),
        Cmd::List(q, r) => reply(r, list(tx, q).await),
        Cmd::Sync(r) => Box::new(move |_| {
            let _ = r.send(());
        }),
        // Only SQLite compacts (outside the transaction); elsewhere nothing is left.
        Cmd::Compact(r) => Box::new(move |_| {
            let _ = r.send(0);
        }),
        Cmd::Stats(r) => reply(r, tx.stats().await),
        Cmd::Tick(t, r) => reply(r, tick(tx, t).await),
        Cmd::LastTick {
            service,
            schedule,
            reply: r,
        } => reply(r, tx.last_tick(&service, &schedule).await),
        Cmd::Size(r) => {
            let size = tx
                .size()
                .await
                .map_err(|e| tracing::warn!("job store size: {e}"))
                .ok();
            Box::new(move |_| {
                let _ = r.send(size);
            })
        }
        Cmd::Prune {
            service,
            before_ms,
            limit,
            reply,
        } => {
            let n = tx
                .prune(&service, before_ms, limit)
                .await
                .unwrap_or_else(|e| {
                    tracing::error!("pruning finished jobs of {service}: {e}");
                    0
                });
            Box::new(move |err| {
                let _ = reply.send(if err.is_some() { 0 } else { n });
            })
        }
    }
}

/// Why a start was not recorded: the job left claim `claim` before a worker took it.
pub(super) fn unstarted(id: &str, claim: i64) -> String {
    format!(
        "job {id} was cancelled, or taken over by another daemon, as a worker took it (claim {claim} is no longer current): its outcome will not be recorded"
    )
}

/// Why an attempt's outcome was dropped: the job is no longer under the claim that
/// ran it.
pub(super) fn dropped(id: &str, claim: i64) -> String {
    format!(
        "job {id} is no longer running here under claim {claim} (it was cancelled, or another daemon took it over when this one's lease expired, and it may have been claimed again since): this attempt's late outcome is dropped"
    )
}

/// Claimed jobs (with their `seq`) highest priority first, then the oldest: the
/// order the pump hands them to workers.
pub(super) fn in_claim_order(mut rows: Vec<(i64, Claimed)>) -> Vec<Claimed> {
    rows.sort_by_key(|(seq, c)| (std::cmp::Reverse(c.priority), *seq));
    rows.into_iter().map(|(_, c)| c).collect()
}

/// A tick enqueues its job only if no daemon recorded that tick before: the tick's
/// record and the job are written in one transaction.
async fn tick(tx: &impl Tx, t: super::Tick) -> Result<Option<String>, JobError> {
    let id = new_id();
    if !tx.tick(&t.job.service, &t.schedule, t.tick_ms, &id).await? {
        return Ok(None);
    }
    if !tx.insert(&id, &t.job, now_ms()).await? {
        return Err(JobError::Store("a tick's job could not be inserted".into()));
    }
    Ok(Some(id))
}

async fn get(tx: &impl Tx, id: &str) -> Result<JobView, JobError> {
    tx.get(id)
        .await?
        .ok_or_else(|| JobError::NotFound(id.to_string()))
}

async fn enqueue(tx: &impl Tx, job: NewJob) -> Result<(JobView, bool), JobError> {
    if let Some(existing) = same_key(tx, &job).await? {
        return Ok((get(tx, &existing).await?, false));
    }
    let id = new_id();
    if !tx.insert(&id, &job, now_ms()).await? {
        // Another daemon inserted the same key in the meantime.
        let existing = same_key(tx, &job)
            .await?
            .ok_or_else(|| JobError::Store("a job with this Idempotency-Key vanished".into()))?;
        return Ok((get(tx, &existing).await?, false));
    }
    Ok((get(tx, &id).await?, true))
}

/// The job already enqueued with `job`'s Idempotency-Key, if any; an error when
/// that job was a different request.
async fn same_key(tx: &impl Tx, job: &NewJob) -> Result<Option<String>, JobError> {
    let Some(key) = &job.idempotency_key else {
        return Ok(None);
    };
    let Some((id, method, content_type, body)) = tx.by_key(&job.service, key).await? else {
        return Ok(None);
    };
    if !job.same_request(&method, &content_type, &body) {
        return Err(JobError::KeyReused {
            key: key.clone(),
            id,
        });
    }
    Ok(Some(id))
}

async fn result(tx: &impl Tx, id: &str) -> Result<(String, Vec<u8>), JobError> {
    let (state, ct, body) = tx
        .result(id)
        .await?
        .ok_or_else(|| JobError::NotFound(id.to_string()))?;
    if state != JobState::Done {
        return Err(JobError::Conflict {
            id: id.to_string(),
            state,
            what: "it has no result".into(),
        });
    }
    Ok((ct.unwrap_or_default(), body.unwrap_or_default()))
}

async fn change(tx: &impl Tx, id: &str, c: ApiChange) -> Result<JobView, JobError> {
    let n = tx.change(id, c).await?;
    let v = get(tx, id).await?;
    if n == 0 {
        return Err(JobError::Conflict {
            id: id.to_string(),
            state: v.state,
            what: c.transition().refusal(),
        });
    }
    Ok(v)
}

async fn list(tx: &impl Tx, q: ListQuery) -> Result<Page, JobError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000) as i64;
    // One row more than a page, to know whether another page follows.
    let jobs = tx.list(&q, limit + 1).await?;
    Ok(page(jobs, limit))
}

/// The statement of an API change on `table`, with `$1` the job's id and `$2` the
/// time in milliseconds.
pub(super) fn change_sql(table: &str, c: ApiChange) -> String {
    let set = match c {
        ApiChange::Cancel => "finished_ms = $2, owner = NULL",
        ApiChange::Retry => "failures = 0, run_after_ms = $2, finished_ms = NULL",
    };
    let t = c.transition();
    format!(
        "UPDATE {table} SET state = {}, {set} WHERE id = $1 AND state IN ({})",
        t.to_sql(),
        t.sources_sql()
    )
}
