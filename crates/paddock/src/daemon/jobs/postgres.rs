//! The shared job store: PostgreSQL, so that several paddock daemons (on several
//! machines) share one queue.
//!
//! Invariants:
//! - claims use `FOR UPDATE SKIP LOCKED`: two daemons never claim the same job;
//! - a claimed job carries a lease (`lease_until_ms`) that its owner renews by
//!   heartbeat every third of `lease_timeout`: a live node's long job is never
//!   claimed again, and a dead node's jobs return to the queue once its leases
//!   expire (recorded in their history as interrupted);
//! - every claim and take-over raises the job's `claims` count, and an attempt's
//!   outcome is recorded only by its owner and under the claim that ran it
//!   (`claims = $k`): a node that lost its lease cannot overwrite the outcome of
//!   the node that took the job over, nor record a late result once it claimed
//!   the same job again;
//! - an enqueue sends `NOTIFY paddock_jobs` in its transaction; every daemon
//!   LISTENs and wakes the service's pump, so no one polls for new work.
//!
//! Commands are applied in groups by the loop in `group_commit.rs`, one transaction per
//! group: the queue's traffic (enqueues, claims, starts, successes) in a few
//! set-based statements (`postgres/bulk.rs`), everything else under a savepoint per
//! command; the rules are in `apply.rs`. This file holds
//! only PostgreSQL's dialect: schema, statements, connections, leases, NOTIFY.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use tokio::sync::mpsc;

use super::pump::Signals;
use tokio_postgres::{Client, Transaction};

mod bulk;
mod conn;

pub(in crate::daemon) use conn::redact;
use conn::{connect, listen, reconnect};

use super::apply::{ApiChange, Keyed, Stored, Tx, apply, change_sql};
use super::group_commit::{self, Applied, Dialect};
use super::row::{COLUMNS, view};
use super::schema;
use super::state::Transition;
use super::stats::StoreStats;
use super::{
    Claimed, Cmd, Finish, JobError, JobState, JobView, ListQuery, NewJob, Store, StoreError,
    ms_to_rfc3339, now_ms, refused,
};

fn db(e: tokio_postgres::Error) -> JobError {
    JobError::Store(StoreError::from(e))
}

/// Connects, creates the schema, and starts the store task, the heartbeat and the
/// listener that wakes pumps.
pub async fn open(
    url: &str,
    owner: String,
    lease: Duration,
    pumps: HashMap<String, Signals>,
) -> Result<Store, StoreError> {
    let mut client = connect(url).await?;
    {
        // Two daemons starting at once must not race on the schema's upgrade.
        let tx = client.transaction().await.map_err(StoreError::from)?;
        tx.execute("SELECT pg_advisory_xact_lock(7217717)", &[])
            .await
            .map_err(StoreError::from)?;
        let failed = |e: tokio_postgres::Error| {
            StoreError::Failed(format!(
                "upgrading the job tables: {}",
                super::error::describe_pg(&e)
            ))
        };
        tx.batch_execute("CREATE TABLE IF NOT EXISTS paddock_schema (version INT NOT NULL)")
            .await
            .map_err(failed)?;
        let version: i64 = tx
            .query_one(
                "SELECT COALESCE(max(version), 0)::BIGINT FROM paddock_schema",
                &[],
            )
            .await
            .map_err(failed)?
            .get(0);
        let name = redact(url);
        let pending = schema::pending(version, &name)?;
        if !pending.is_empty() {
            let existed: bool = tx
                .query_one("SELECT to_regclass('paddock_jobs') IS NOT NULL", &[])
                .await
                .map_err(failed)?
                .get(0);
            for m in pending {
                tx.batch_execute(m.postgres).await.map_err(failed)?;
            }
            tx.execute("DELETE FROM paddock_schema", &[])
                .await
                .map_err(failed)?;
            tx.execute(
                "INSERT INTO paddock_schema (version) VALUES ($1)",
                &[&(schema::VERSION as i32)],
            )
            .await
            .map_err(failed)?;
            if existed {
                tracing::info!("{}", schema::upgraded(&name, version.max(1), pending));
            }
        }
        tx.commit().await.map_err(StoreError::from)?;
    }
    // Finishes committed here or by another daemon (NOTIFY paddock_finish).
    let finishes = std::sync::Arc::new(super::finishes::Finishes::default());
    listen(url.to_string(), pumps, finishes.clone()).await?;
    let mut heartbeat = connect(url).await?;
    let lease_ms = lease.as_millis() as i64;
    let hb_owner = owner.clone();
    let hb_url = url.to_string();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(lease / 3).await;
            if heartbeat.is_closed() {
                heartbeat = reconnect(&hb_url, "heartbeat").await;
            }
            let now = now_ms();
            if let Err(e) = heartbeat
                .execute(
                    // SKIP LOCKED: rows the store task is finishing right now are
                    // not waited for (waiting could deadlock with it).
                    HEARTBEAT.as_str(),
                    &[&(now + lease_ms), &hb_owner],
                )
                .await
            {
                tracing::error!("job lease heartbeat: {e}");
            }
        }
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let outage = std::sync::Arc::new(std::sync::Mutex::new(None));
    tokio::spawn(group_commit::run(
        rx,
        Postgres {
            client,
            owner,
            lease_ms,
            url: url.to_string(),
            prepared: None,
            taken_over: HashMap::new(),
            down: None,
            outage: outage.clone(),
        },
        finishes.clone(),
    ));
    Ok(Store::new(tx, finishes).with_outage(outage))
}

/// Tells every daemon (`LISTEN paddock_finish`) which jobs' attempts ended or were
/// cancelled in this transaction: delivered at its commit. Each notification
/// carries many ids, separated by spaces ([`finish_payloads`]).
const NOTIFY_FINISHED: &str =
    "SELECT pg_notify('paddock_finish', ids) FROM unnest($1::text[]) AS ids";

/// A notification's payload must stay under 8000 bytes.
const PAYLOAD_MAX: usize = 7000;

/// The ids of jobs that ended, as few payloads as fit: one notification per
/// several hundred jobs instead of one per job (each costs the server a queue
/// entry, and every listening daemon a wake-up).
fn finish_payloads(ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for id in ids {
        match out.last_mut() {
            Some(p) if p.len() + 1 + id.len() <= PAYLOAD_MAX => {
                p.push(' ');
                p.push_str(id);
            }
            _ => out.push(id.clone()),
        }
    }
    out
}

/// Renews this daemon's leases on its claimed and running jobs.
static HEARTBEAT: LazyLock<String> = LazyLock::new(|| {
    Transition::TakeOver.sql(
        "UPDATE paddock_jobs SET lease_until_ms = $1 WHERE seq IN (
           SELECT seq FROM paddock_jobs WHERE owner = $2 AND state IN ({from})
           ORDER BY seq FOR UPDATE SKIP LOCKED)",
    )
});

/// Takes over claimed and running jobs whose lease expired, recorded in their
/// history as interrupted (a claimed one may have been handed to a worker an
/// instant before its start was recorded). Parameters: now, owner, service, limit,
/// the time as text, the lease.
static TAKE_OVER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE paddock_jobs SET
           history = history || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', $5::text,
             'outcome', 'interrupted', 'cause', jsonb_build_object('kind', 'lease_expired', 'owner', owner, 'state', state))),
           state = {to}, owner = $2, lease_until_ms = $1 + $6, claims = claims + 1
         WHERE seq IN (
           SELECT seq FROM paddock_jobs
           WHERE service = $3 AND state IN ({over}) AND lease_until_ms < $1
           ORDER BY seq LIMIT $4 FOR UPDATE SKIP LOCKED)
         RETURNING id, method, content_type, body, failures, seq, priority, claims",
        over = Transition::TakeOver.sources_sql(),
        to = Transition::Claim.to_sql(),
    )
});

/// Claims queued jobs whose time came, highest priority first, then the oldest:
/// the order of the `paddock_jobs_claim` index, read in order and stopped at the
/// limit (a condition ORed with the take-over made the server sort every queued
/// job of the service at each claim). Parameters: now, owner, service, limit, the
/// lease.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    let claim = Transition::Claim;
    format!(
        "UPDATE paddock_jobs SET state = {to}, owner = $2, lease_until_ms = $1 + $5, claims = claims + 1
         WHERE seq IN (
           SELECT seq FROM paddock_jobs
           WHERE service = $3 AND state IN ({queued}) AND run_after_ms <= $1
           ORDER BY priority DESC, run_after_ms, seq LIMIT $4 FOR UPDATE SKIP LOCKED)
         RETURNING id, method, content_type, body, failures, seq, priority, claims",
        queued = claim.sources_sql(),
        to = claim.to_sql(),
    )
});

/// A claimed row (`RETURNING id, method, content_type, body, failures, seq,
/// priority, claims`), with its `seq`.
fn claimed_of(r: &tokio_postgres::Row) -> (i64, Claimed) {
    (
        r.get(5),
        Claimed {
            id: r.get(0),
            seq: r.get(5),
            method: r.get(1),
            content_type: r.get(2),
            body: r.get(3),
            failures: r.get::<_, i32>(4) as u32,
            priority: r.get(6),
            claim: r.get(7),
        },
    )
}

/// Claims up to `limit` jobs of `service` for `owner`, with their `seq`, by the
/// statements `[DUE, TAKE_OVER, CLAIM]` (their text, or prepared): scheduled jobs
/// whose time came join the queue, jobs whose lease expired are taken over (when
/// `take_over`), then queued jobs fill what is left.
async fn claim_rows<S: tokio_postgres::ToStatement + ?Sized>(
    tx: &Transaction<'_>,
    [due, take_over, claim]: [&S; 3],
    service: &str,
    limit: usize,
    owner: &str,
    lease_ms: i64,
    look_for_expired: bool,
) -> Result<Vec<(i64, Claimed)>, tokio_postgres::Error> {
    let now = now_ms();
    tx.execute(due, &[&service, &now]).await?;
    let mut rows = if look_for_expired {
        let at = ms_to_rfc3339(now);
        tx.query(
            take_over,
            &[&now, &owner, &service, &(limit as i64), &at, &lease_ms],
        )
        .await?
    } else {
        vec![]
    };
    if rows.len() < limit {
        let left = (limit - rows.len()) as i64;
        rows.extend(
            tx.query(claim, &[&now, &owner, &service, &left, &lease_ms])
                .await?,
        );
    }
    Ok(rows.iter().map(claimed_of).collect())
}

/// Scheduled jobs of a service whose time came join the queue (before a claim).
static DUE: LazyLock<String> = LazyLock::new(|| {
    Transition::Due.sql(
        "UPDATE paddock_jobs SET state = {to} WHERE service = $1 AND state IN ({from}) AND run_after_ms <= $2",
    )
});

static FAIL: LazyLock<String> = LazyLock::new(|| {
    // Dead when the failure is permanent or no attempt is left, queued otherwise.
    Transition::FailAgain
        .sql(
            "UPDATE paddock_jobs SET failures = failures + 1, owner = NULL, lease_until_ms = NULL,
           state = CASE WHEN ($2::boolean OR failures + 1 >= max_attempts) THEN {dead} ELSE {to} END,
           finished_ms = CASE WHEN ($2::boolean OR failures + 1 >= max_attempts) THEN $3::bigint ELSE NULL END,
           run_after_ms = $3::bigint + $4::bigint,
           history = history || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', $5::text,
             'outcome', 'failed', 'cause', $6::text::jsonb))
         WHERE id = $1 AND state IN ({from}) AND owner = $7 AND claims = $8",
        )
        .replace("{dead}", &Transition::FailDead.to_sql())
});

static INTERRUPT: LazyLock<String> = LazyLock::new(|| {
    Transition::Interrupt.sql(
        "UPDATE paddock_jobs SET state = {to}, owner = NULL, lease_until_ms = NULL, run_after_ms = $2::bigint,
           history = history || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', $3::text,
             'outcome', 'interrupted', 'cause', jsonb_build_object('kind', 'daemon_stopped', 'message', $4::text)))
         WHERE id = $1 AND state IN ({from}) AND owner = $5 AND claims = $6",
    )
});

static RELEASE: LazyLock<String> = LazyLock::new(|| {
    // A started job that never reached a worker does not count its start.
    Transition::Release.sql(&format!(
        "UPDATE paddock_jobs SET state = {{to}}, owner = NULL, lease_until_ms = NULL, run_after_ms = $2,
           attempts = attempts - CASE WHEN state = '{}' THEN 1 ELSE 0 END
         WHERE id = $1 AND state IN ({{from}}) AND owner = $3 AND claims = $4",
        JobState::Running.as_str()
    ))
});

static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO paddock_jobs (id, service, method, content_type, body, state, max_attempts, idempotency_key, created_ms, run_after_ms, priority)
         VALUES ($1, $2, $3, $4, $5, CASE WHEN $9::BIGINT > $8::BIGINT THEN '{}' ELSE '{}' END, $6, $7, $8, GREATEST($9, $8), $10)
         ON CONFLICT (service, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        JobState::Scheduled.as_str(),
        JobState::Queued.as_str()
    )
});

/// The store's connection is lost and not yet back.
struct Down {
    since: std::time::Instant,
    since_at: String,
    attempts: u32,
    next_try: std::time::Instant,
    reason: String,
}

impl Down {
    fn message(&self, url: &str) -> String {
        format!(
            "the job store {} is unreachable since {} ({} reconnect attempt{}; the next in {:.1}s): {}",
            redact(url),
            self.since_at,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.next_try
                .saturating_duration_since(std::time::Instant::now())
                .as_secs_f64(),
            self.reason
        )
    }
}

/// How long one reconnect attempt may take: an enqueue during an outage is
/// answered within a second.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The store task's connection.
struct Postgres {
    client: Client,
    owner: String,
    lease_ms: i64,
    url: String,
    /// The fast path's statements on this connection (prepared again after a
    /// reconnect).
    prepared: Option<bulk::Prepared>,
    /// When the fast path last looked for expired leases, per service.
    taken_over: HashMap<String, std::time::Instant>,
    /// Set while the connection is lost: commands are refused at once meanwhile,
    /// and a reconnect is tried with backoff.
    down: Option<Down>,
    /// What `status` shows of an outage.
    outage: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Postgres {
    /// Connects again if the connection was lost, at most one attempt per call and
    /// none before the backoff's next try: the caller hears at once why not.
    async fn reconnect_now(&mut self) -> Result<(), StoreError> {
        let now = std::time::Instant::now();
        if let Some(d) = &self.down
            && now < d.next_try
        {
            return Err(StoreError::Unreachable(d.message(&self.url)));
        }
        let tried = tokio::time::timeout(CONNECT_TIMEOUT, connect(&self.url)).await;
        match tried {
            Ok(Ok(client)) => {
                self.client = client;
                self.prepared = None;
                match self.down.take() {
                    Some(d) => tracing::info!(
                        "job store: reconnected to {} after {:.1}s unreachable ({} attempts)",
                        redact(&self.url),
                        d.since.elapsed().as_secs_f64(),
                        d.attempts
                    ),
                    None => tracing::info!(
                        "job store: its connection was lost; reconnected to {}",
                        redact(&self.url)
                    ),
                }
                *self.outage.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(())
            }
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no connection within {}ms", CONNECT_TIMEOUT.as_millis()),
                };
                let d = self.down.get_or_insert_with(|| Down {
                    since: now,
                    since_at: crate::timefmt::now(),
                    attempts: 0,
                    next_try: now,
                    reason: String::new(),
                });
                d.attempts += 1;
                let backoff = (Duration::from_millis(100)
                    * 2u32.saturating_pow(d.attempts.min(10) - 1))
                .min(Duration::from_secs(5));
                d.next_try = now + backoff;
                d.reason = reason;
                let message = d.message(&self.url);
                tracing::error!("{message}; jobs are refused with 503 until it is back");
                *self.outage.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
                Err(StoreError::Unreachable(message))
            }
        }
    }
}

impl Dialect for Postgres {
    async fn apply_group(&mut self, cmds: Vec<Cmd>) -> Applied {
        if (self.client.is_closed() || self.down.is_some())
            && let Err(e) = self.reconnect_now().await
        {
            return Applied {
                replies: cmds.into_iter().map(refused).collect(),
                commit: Err(e),
                again: vec![],
            };
        }
        if self.prepared.is_none() {
            match bulk::Prepared::new(&self.client).await {
                Ok(p) => self.prepared = Some(p),
                Err(e) => tracing::warn!("job store: preparing its statements: {e}"),
            }
        }
        let Postgres {
            client,
            owner,
            lease_ms,
            prepared,
            taken_over,
            ..
        } = self;
        if let Some(p) = prepared.as_ref()
            && cmds.iter().any(bulk::fast)
        {
            let tx = match client.transaction().await {
                Ok(tx) => tx,
                Err(e) => return not_begun(cmds, e),
            };
            match bulk::apply(&tx, p, &cmds, owner, *lease_ms, taken_over).await {
                Ok(d) => {
                    return careful(
                        PgTx {
                            tx,
                            owner,
                            lease_ms: *lease_ms,
                        },
                        cmds,
                        Some(d),
                    )
                    .await;
                }
                // Rolled back (the transaction is dropped): the careful path
                // applies the whole group again, a savepoint per command.
                Err(e) => tracing::warn!(
                    "job store: a group's bulk statements failed ({e}); applying its {} commands one at a time",
                    cmds.len()
                ),
            }
        }
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(e) => return not_begun(cmds, e),
        };
        careful(
            PgTx {
                tx,
                owner,
                lease_ms: *lease_ms,
            },
            cmds,
            None,
        )
        .await
    }
}

/// The group's transaction could not begin: every caller hears why.
fn not_begun(cmds: Vec<Cmd>, e: tokio_postgres::Error) -> Applied {
    Applied {
        replies: cmds.into_iter().map(refused).collect(),
        commit: Err(StoreError::from(e)),
        again: vec![],
    }
}

/// Applies the commands the fast path did not (all of them when `done` is None),
/// each under a savepoint; answers those it did from `done`; then commits.
async fn careful(tx: PgTx<'_>, cmds: Vec<Cmd>, mut done: Option<bulk::Done>) -> Applied {
    let ended: Vec<String> = cmds.iter().filter_map(Cmd::ended).collect();
    let mut replies = Vec::with_capacity(cmds.len());
    let mut again = vec![];
    let mut broken = None;
    let mut cmds = cmds.into_iter().enumerate();
    for (i, cmd) in cmds.by_ref() {
        if let Some(d) = done.as_mut()
            && bulk::fast(&cmd)
        {
            replies.push(match cmd {
                Cmd::Enqueue(_, r) => super::reply(
                    r,
                    d.enqueued
                        .remove(&i)
                        .map(|v| (v, true))
                        .ok_or_else(|| JobError::Store("the enqueued job was not returned".into())),
                ),
                Cmd::Claim { reply, .. } => {
                    super::claim_reply(reply, d.claimed.remove(&i).unwrap_or_default())
                }
                _ => Box::new(|_: Option<&StoreError>| {}),
            });
            continue;
        }
        // One failing statement aborts a PostgreSQL transaction: each command
        // runs under a savepoint, so a failure undoes that command alone and its
        // caller hears of it, instead of the whole group rolling back behind
        // acknowledged replies.
        if let Err(e) = tx.tx.batch_execute("SAVEPOINT cmd").await {
            broken = Some(StoreError::from(e));
            replies.push(refused(cmd));
            break;
        }
        let outcome = cmd.outcome();
        let r = apply(&tx, cmd).await;
        match tx.tx.batch_execute("RELEASE SAVEPOINT cmd").await {
            Ok(()) => replies.push(r),
            Err(e) => {
                let why = StoreError::from(e);
                tracing::error!("job store command rolled back: {why}");
                replies.push(Box::new(move |_| {
                    r(Some(&StoreError::Failed(format!("rolled back: {why}"))))
                }));
                // A job's outcome must not be lost to a transient failure (a
                // deadlock, a serialization failure): it goes in a later group.
                again.extend(outcome);
                if let Err(e) = tx
                    .tx
                    .batch_execute("ROLLBACK TO SAVEPOINT cmd; RELEASE SAVEPOINT cmd")
                    .await
                {
                    broken = Some(StoreError::from(e));
                    break;
                }
            }
        }
    }
    replies.extend(cmds.map(|(_, c)| refused(c)));
    // Daemons waiting for these jobs (long-polls) hear of their end at the commit.
    if broken.is_none()
        && !ended.is_empty()
        && let Err(e) = tx
            .tx
            .execute(NOTIFY_FINISHED, &[&finish_payloads(&ended)])
            .await
    {
        broken = Some(StoreError::from(e));
    }
    let commit = match broken {
        Some(e) => Err(e),
        None => tx.tx.commit().await.map_err(StoreError::from),
    };
    Applied {
        replies,
        commit,
        again,
    }
}

/// The group's transaction, with this daemon's identity for its leases.
struct PgTx<'a> {
    tx: Transaction<'a>,
    owner: &'a str,
    lease_ms: i64,
}

impl Tx for PgTx<'_> {
    async fn get(&self, id: &str) -> Result<Option<JobView>, JobError> {
        let row = self
            .tx
            .query_opt(
                &format!("SELECT {COLUMNS} FROM paddock_jobs WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(db)?;
        row.map(|r| view(&r)).transpose().map_err(JobError::Store)
    }

    async fn by_key(&self, service: &str, key: &str) -> Result<Option<Keyed>, JobError> {
        let row = self
            .tx
            .query_opt(
                "SELECT id, method, content_type, body FROM paddock_jobs WHERE service = $1 AND idempotency_key = $2",
                &[&service, &key],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
    }

    async fn insert(&self, id: &str, job: &NewJob, now: i64) -> Result<bool, JobError> {
        let inserted = self
            .tx
            .execute(
                INSERT.as_str(),
                &[
                    &id,
                    &job.service,
                    &job.method,
                    &job.content_type,
                    &job.body,
                    &(job.max_attempts as i32),
                    &job.idempotency_key,
                    &now,
                    &job.run_after_ms.unwrap_or(now),
                    &job.priority,
                ],
            )
            .await
            .map_err(db)?;
        if inserted > 0 {
            self.tx
                .execute("SELECT pg_notify('paddock_jobs', $1)", &[&job.service])
                .await
                .map_err(db)?;
        }
        Ok(inserted > 0)
    }

    async fn claim(&self, service: &str, limit: usize) -> Result<Vec<(i64, Claimed)>, StoreError> {
        let stmts = [DUE.as_str(), TAKE_OVER.as_str(), CLAIM.as_str()];
        claim_rows(
            &self.tx,
            stmts,
            service,
            limit,
            self.owner,
            self.lease_ms,
            true,
        )
        .await
        .map_err(StoreError::from)
    }

    async fn finish(&self, id: &str, claim: i64, finish: Finish) -> Result<u64, StoreError> {
        let now = now_ms();
        let at = ms_to_rfc3339(now);
        let owner = self.owner;
        let n = match finish {
            // The bulk path's statements, for one job: the fencing is written once.
            Finish::Start { seq } => self
                .tx
                .query(
                    bulk::START_MANY.as_str(),
                    &[&[seq].as_slice(), &now, &owner, &[claim].as_slice()],
                )
                .await
                .map(|rows| rows.len() as u64),
            Finish::Done { content_type, body } => self
                .tx
                .query(
                    bulk::DONE_MANY.as_str(),
                    &[
                        &[id].as_slice(),
                        &[body.as_slice()].as_slice(),
                        &[content_type.as_str()].as_slice(),
                        &now,
                        &at,
                        &owner,
                        &[claim].as_slice(),
                    ],
                )
                .await
                .map(|rows| rows.len() as u64),
            Finish::Failed {
                cause,
                permanent,
                backoff_ms,
            } => {
                // PostgreSQL's jsonb refuses NUL characters.
                let cause = cause.to_string().replace("\\u0000", "");
                self.tx
                    .execute(
                        FAIL.as_str(),
                        &[
                            &id,
                            &permanent,
                            &now,
                            &(backoff_ms as i64),
                            &at,
                            &cause,
                            &owner,
                            &claim,
                        ],
                    )
                    .await
            }
            Finish::Interrupted { why } => {
                self.tx
                    .execute(INTERRUPT.as_str(), &[&id, &now, &at, &why, &owner, &claim])
                    .await
            }
            Finish::Release { why, after_ms } => {
                tracing::debug!("job {id} released: {why}");
                self.tx
                    .execute(
                        RELEASE.as_str(),
                        &[&id, &(now + after_ms as i64), &owner, &claim],
                    )
                    .await
            }
        };
        n.map_err(StoreError::from)
    }

    async fn result(&self, id: &str) -> Result<Option<Stored>, JobError> {
        let row = self
            .tx
            .query_opt(
                "SELECT state, result_content_type, result FROM paddock_jobs WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    async fn prune(&self, service: &str, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM paddock_jobs WHERE seq IN (SELECT seq FROM paddock_jobs WHERE service = $1
               AND finished_ms IS NOT NULL AND finished_ms < $2 AND state IN ({})
               ORDER BY finished_ms LIMIT $3 FOR UPDATE SKIP LOCKED)",
            JobState::finished_sql()
        );
        self.tx
            .execute(sql.as_str(), &[&service, &before_ms, &(limit as i64)])
            .await
            .map_err(StoreError::from)
    }

    async fn stats(&self) -> Result<StoreStats, JobError> {
        let rows = self
            .tx
            .query(
                "SELECT service, state, count(*) FROM paddock_jobs GROUP BY service, state",
                &[],
            )
            .await
            .map_err(db)?;
        let mut counts = vec![];
        for r in &rows {
            let state: String = r.get(1);
            let state = JobState::parse(&state)
                .ok_or_else(|| JobError::Store(format!("unknown job state {state:?}").into()))?;
            counts.push((r.get::<_, String>(0), state, r.get::<_, i64>(2) as u64));
        }
        let services: std::collections::BTreeSet<String> =
            counts.iter().map(|(s, _, _)| s.clone()).collect();
        let mut oldest_finished = vec![];
        for service in services {
            let row = self
                .tx
                .query_one(
                    "SELECT min(finished_ms) FROM paddock_jobs WHERE service = $1 AND finished_ms IS NOT NULL",
                    &[&service],
                )
                .await
                .map_err(db)?;
            let at: Option<i64> = row.get(0);
            oldest_finished.extend(at.map(|at| (service, at)));
        }
        let bytes: i64 = self
            .tx
            .query_one("SELECT pg_total_relation_size('paddock_jobs')", &[])
            .await
            .map_err(db)?
            .get(0);
        Ok(StoreStats {
            counts,
            oldest_finished,
            bytes: bytes.max(0) as u64,
        })
    }

    async fn size(&self) -> Result<u64, StoreError> {
        let bytes: i64 = self
            .tx
            .query_one("SELECT pg_total_relation_size('paddock_jobs')", &[])
            .await
            .map_err(StoreError::from)?
            .get(0);
        Ok(bytes.max(0) as u64)
    }

    async fn change(&self, id: &str, c: ApiChange) -> Result<u64, JobError> {
        let n = self
            .tx
            .execute(change_sql("paddock_jobs", c).as_str(), &[&id, &now_ms()])
            .await
            .map_err(db)?;
        if n > 0 {
            let notify = match c {
                // Wake the pumps of every daemon serving the job's service.
                ApiChange::Retry => {
                    "SELECT pg_notify('paddock_jobs', service) FROM paddock_jobs WHERE id = $1"
                }
                // The daemon that claimed it ahead drops it (conn::listen).
                ApiChange::Cancel => {
                    "SELECT pg_notify('paddock_cancel', service || ' ' || id) FROM paddock_jobs WHERE id = $1"
                }
            };
            self.tx.execute(notify, &[&id]).await.map_err(db)?;
        }
        Ok(n)
    }

    async fn list(&self, q: &ListQuery, limit: i64) -> Result<Vec<JobView>, JobError> {
        let rows = self
            .tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM paddock_jobs WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR service = $2)
                     AND seq > $3 ORDER BY seq LIMIT $4"
                ),
                &[&q.state, &q.service, &q.after.unwrap_or(0), &limit],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| view(r).map_err(JobError::Store))
            .collect()
    }

    async fn tick(
        &self,
        service: &str,
        schedule: &str,
        tick_ms: i64,
        job_id: &str,
    ) -> Result<bool, JobError> {
        // Another daemon inserting the same tick at once waits for this one's commit,
        // then inserts nothing: each tick is enqueued once.
        let n = self
            .tx
            .execute(
                "INSERT INTO paddock_schedule_ticks (service, schedule, tick_ms, job_id) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&service, &schedule, &tick_ms, &job_id],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    async fn last_tick(&self, service: &str, schedule: &str) -> Result<Option<i64>, JobError> {
        let row = self
            .tx
            .query_one(
                "SELECT max(tick_ms) FROM paddock_schedule_ticks WHERE service = $1 AND schedule = $2",
                &[&service, &schedule],
            )
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ended_jobs_share_notifications_and_each_stays_under_the_payload_limit() {
        let ids: Vec<String> = (0..1000).map(|i| format!("j{i:027}")).collect();
        let payloads = super::finish_payloads(&ids);
        assert_eq!(payloads.len(), 1000 * 29 / super::PAYLOAD_MAX + 1);
        assert!(payloads.iter().all(|p| p.len() <= super::PAYLOAD_MAX));
        let back: Vec<&str> = payloads.iter().flat_map(|p| p.split(' ')).collect();
        assert_eq!(back, ids.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(super::finish_payloads(&[]).is_empty());
    }
}
