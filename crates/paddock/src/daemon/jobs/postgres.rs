//! The shared job store: PostgreSQL, so that several paddock daemons (on several
//! machines) share one queue.
//!
//! Invariants:
//! - claims use `FOR UPDATE SKIP LOCKED`: two daemons never claim the same job;
//! - a claimed job carries a lease (`lease_until_ms`) that its owner renews by
//!   heartbeat every third of `lease_timeout`: a live node's long job is never
//!   claimed again, and a dead node's jobs return to the queue once its leases
//!   expire (recorded in their history as interrupted);
//! - only the owner of a running job can finish it, so a node that lost its lease
//!   cannot overwrite the outcome of the node that took the job over;
//! - an enqueue sends `NOTIFY paddock_jobs` in its transaction; every daemon
//!   LISTENs and wakes the service's pump, so no one polls for new work.
//!
//! Commands are applied in groups, one transaction per group, like the SQLite store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio_postgres::{Client, Row, Transaction};

mod conn;

use conn::{connect, listen, pg_error, reconnect};

use super::{
    Claimed, Cmd, Finish, JobError, JobState, JobView, ListQuery, NewJob, Page, Reply, Store,
    claim_reply, ms_to_rfc3339, new_id, now_ms, page, reply,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS paddock_jobs (
  seq BIGSERIAL PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  service TEXT NOT NULL,
  method TEXT NOT NULL,
  content_type TEXT NOT NULL,
  body BYTEA NOT NULL,
  state TEXT NOT NULL,
  attempts INT NOT NULL DEFAULT 0,
  failures INT NOT NULL DEFAULT 0,
  max_attempts INT NOT NULL,
  idempotency_key TEXT,
  created_ms BIGINT NOT NULL,
  started_ms BIGINT,
  finished_ms BIGINT,
  run_after_ms BIGINT NOT NULL,
  owner TEXT,
  lease_until_ms BIGINT,
  history JSONB NOT NULL DEFAULT '[]',
  result BYTEA,
  result_content_type TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS paddock_jobs_idempotency ON paddock_jobs(service, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS paddock_jobs_queue ON paddock_jobs(service, state, run_after_ms, seq);
CREATE INDEX IF NOT EXISTS paddock_jobs_owner ON paddock_jobs(owner) WHERE state = 'running';
";

const COLUMNS: &str = "id, seq, service, method, state, attempts, failures, max_attempts, idempotency_key, \
                       created_ms, started_ms, finished_ms, run_after_ms, history::text, result_content_type, owner";

fn view(r: &Row) -> JobView {
    let history: String = r.get(13);
    JobView {
        id: r.get(0),
        seq: r.get(1),
        service: r.get(2),
        method: r.get(3),
        state: r.get(4),
        attempts: r.get::<_, i32>(5) as u32,
        failures: r.get::<_, i32>(6) as u32,
        max_attempts: r.get::<_, i32>(7) as u32,
        idempotency_key: r.get(8),
        created_at: ms_to_rfc3339(r.get(9)),
        started_at: r.get::<_, Option<i64>>(10).map(ms_to_rfc3339),
        finished_at: r.get::<_, Option<i64>>(11).map(ms_to_rfc3339),
        run_after: ms_to_rfc3339(r.get(12)),
        history: serde_json::from_str(&history).unwrap_or(json!([])),
        result_content_type: r.get(14),
        owner: r.get(15),
    }
}

fn db(e: tokio_postgres::Error) -> JobError {
    JobError::Store(pg_error(&e))
}

/// Connects, creates the schema, and starts the store task, the heartbeat and the
/// listener that wakes pumps.
pub async fn open(
    url: &str,
    owner: String,
    lease: Duration,
    wake: HashMap<String, Arc<Notify>>,
) -> Result<Store, String> {
    let mut client = connect(url).await?;
    {
        // Two daemons starting at once must not race on CREATE TABLE.
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        tx.execute("SELECT pg_advisory_xact_lock(7217717)", &[])
            .await
            .map_err(|e| e.to_string())?;
        tx.batch_execute(SCHEMA)
            .await
            .map_err(|e| format!("creating the job table: {e}"))?;
        tx.commit().await.map_err(|e| e.to_string())?;
    }
    listen(url.to_string(), wake).await?;
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
                    "UPDATE paddock_jobs SET lease_until_ms = $1 WHERE seq IN (
                       SELECT seq FROM paddock_jobs WHERE owner = $2 AND state = 'running'
                       ORDER BY seq FOR UPDATE SKIP LOCKED)",
                    &[&(now + lease_ms), &hb_owner],
                )
                .await
            {
                tracing::error!("job lease heartbeat: {e}");
            }
        }
    });
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(
        client,
        rx,
        tx.clone(),
        owner,
        lease_ms,
        url.to_string(),
    ));
    Ok(Store::Postgres(tx))
}

async fn run(
    mut client: Client,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    me: mpsc::UnboundedSender<Cmd>,
    owner: String,
    lease_ms: i64,
    url: String,
) {
    while let Some(first) = rx.recv().await {
        if client.is_closed() {
            client = reconnect(&url, "store").await;
        }
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        // Every outcome in this group, to send again if the group cannot commit.
        let finishes: Vec<(String, Finish)> = batch
            .iter()
            .filter_map(|c| match c {
                Cmd::Finish { id, finish } => Some((id.clone(), finish.clone())),
                _ => None,
            })
            .collect();
        let result = async {
            let tx = client.transaction().await?;
            for cmd in batch {
                // One failing statement aborts a PostgreSQL transaction: each command
                // runs under a savepoint, so a failure undoes that command alone and
                // its caller hears of it, instead of the whole group rolling back
                // behind acknowledged replies.
                tx.batch_execute("SAVEPOINT cmd").await?;
                let again = match &cmd {
                    Cmd::Finish { id, finish } => Some((id.clone(), finish.clone())),
                    _ => None,
                };
                let r = apply(&tx, cmd, &owner, lease_ms).await;
                if let Err(e) = tx.batch_execute("RELEASE SAVEPOINT cmd").await {
                    let why = pg_error(&e);
                    tracing::error!("job store command rolled back: {why}");
                    tx.batch_execute("ROLLBACK TO SAVEPOINT cmd; RELEASE SAVEPOINT cmd")
                        .await?;
                    // A job's outcome must not be lost to a transient failure (a
                    // deadlock, a serialization failure): try again shortly.
                    if let Some(f) = again {
                        resend(&me, vec![f]);
                    }
                    replies.push(Box::new(move |_| r(Some(&format!("rolled back: {why}")))));
                } else {
                    replies.push(r);
                }
            }
            tx.commit().await
        }
        .await;
        let err = result.err().map(|e| pg_error(&e));
        if let Some(e) = &err {
            tracing::error!("job store commit failed: {e}");
            resend(&me, finishes);
        }
        for r in replies {
            r(err.as_deref());
        }
    }
}

/// Sends job outcomes back to the store after a short pause (they failed to commit).
fn resend(me: &mpsc::UnboundedSender<Cmd>, finishes: Vec<(String, Finish)>) {
    if finishes.is_empty() {
        return;
    }
    let me = me.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (id, finish) in finishes {
            let _ = me.send(Cmd::Finish { id, finish });
        }
    });
}

async fn get(tx: &Transaction<'_>, id: &str) -> Result<JobView, JobError> {
    tx.query_opt(
        &format!("SELECT {COLUMNS} FROM paddock_jobs WHERE id = $1"),
        &[&id],
    )
    .await
    .map_err(db)?
    .map(|r| view(&r))
    .ok_or_else(|| JobError::NotFound(id.to_string()))
}

async fn apply(tx: &Transaction<'_>, cmd: Cmd, owner: &str, lease_ms: i64) -> Reply {
    match cmd {
        Cmd::Enqueue(job, r) => reply(r, enqueue(tx, job).await),
        Cmd::Claim {
            service,
            limit,
            reply,
        } => {
            let claimed = claim(tx, &service, limit, owner, lease_ms)
                .await
                .unwrap_or_else(|e| {
                    tracing::error!("claiming jobs of {service}: {}", pg_error(&e));
                    vec![]
                });
            claim_reply(reply, claimed)
        }
        Cmd::Finish { id, finish } => {
            match finish_job(tx, &id, finish, owner).await {
                Ok(0) => tracing::warn!(
                    "job {id} was taken over by another node (its lease expired); outcome dropped"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!("finishing job {id}: {}", pg_error(&e)),
            }
            Box::new(|_| {})
        }
        Cmd::Get(id, r) => reply(r, get(tx, &id).await),
        Cmd::Result(id, r) => {
            let v = async {
                let row = tx
                    .query_opt(
                        "SELECT state, result_content_type, result FROM paddock_jobs WHERE id = $1",
                        &[&id],
                    )
                    .await
                    .map_err(db)?
                    .ok_or_else(|| JobError::NotFound(id.clone()))?;
                let state: JobState = row.get(0);
                if state != JobState::Done {
                    return Err(JobError::Conflict {
                        id: id.clone(),
                        state,
                        what: "it has no result".into(),
                    });
                }
                Ok((
                    row.get::<_, Option<String>>(1).unwrap_or_default(),
                    row.get::<_, Option<Vec<u8>>>(2).unwrap_or_default(),
                ))
            }
            .await;
            reply(r, v)
        }
        Cmd::Cancel(id, r) => {
            let v = transition(
                tx,
                &id,
                "UPDATE paddock_jobs SET state = 'cancelled', finished_ms = $2 WHERE id = $1 AND state = 'queued'",
                "only a queued job can be cancelled",
            )
            .await;
            reply(r, v)
        }
        Cmd::Retry(id, r) => {
            let v = transition(
                tx,
                &id,
                "UPDATE paddock_jobs SET state = 'queued', failures = 0, run_after_ms = $2, finished_ms = NULL
                 WHERE id = $1 AND state IN ('dead', 'cancelled')",
                "only a dead or cancelled job can be retried",
            )
            .await;
            if let Ok(v) = &v {
                let _ = tx
                    .execute("SELECT pg_notify('paddock_jobs', $1)", &[&v.service])
                    .await;
            }
            reply(r, v)
        }
        Cmd::List(q, r) => reply(r, list(tx, q).await),
        Cmd::Sync(r) => Box::new(move |_| {
            let _ = r.send(());
        }),
    }
}

async fn enqueue(tx: &Transaction<'_>, job: NewJob) -> Result<(JobView, bool), JobError> {
    if let Some(existing) = same_key(tx, &job).await? {
        return Ok((get(tx, &existing).await?, false));
    }
    let id = new_id();
    let now = now_ms();
    // ON CONFLICT: another daemon inserted the same key in the meantime.
    let inserted = tx
        .execute(
            "INSERT INTO paddock_jobs (id, service, method, content_type, body, state, max_attempts, idempotency_key, created_ms, run_after_ms)
             VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $8)
             ON CONFLICT (service, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
            &[&id, &job.service, &job.method, &job.content_type, &job.body, &(job.max_attempts as i32), &job.idempotency_key, &now],
        )
        .await
        .map_err(db)?;
    if inserted == 0 {
        let existing = same_key(tx, &job)
            .await?
            .ok_or_else(|| JobError::Store("a job with this Idempotency-Key vanished".into()))?;
        return Ok((get(tx, &existing).await?, false));
    }
    tx.execute("SELECT pg_notify('paddock_jobs', $1)", &[&job.service])
        .await
        .map_err(db)?;
    Ok((get(tx, &id).await?, true))
}

/// The job already enqueued with `job`'s Idempotency-Key, if any; an error when
/// that job was a different request.
async fn same_key(tx: &Transaction<'_>, job: &NewJob) -> Result<Option<String>, JobError> {
    let Some(key) = &job.idempotency_key else {
        return Ok(None);
    };
    let Some(row) = tx
        .query_opt(
            "SELECT id, method, content_type, body FROM paddock_jobs WHERE service = $1 AND idempotency_key = $2",
            &[&job.service, key],
        )
        .await
        .map_err(db)?
    else {
        return Ok(None);
    };
    let id: String = row.get(0);
    let (method, content_type, body): (String, String, Vec<u8>) =
        (row.get(1), row.get(2), row.get(3));
    if !job.same_request(&method, &content_type, &body) {
        return Err(JobError::KeyReused {
            key: key.clone(),
            id,
        });
    }
    Ok(Some(id))
}

async fn claim(
    tx: &Transaction<'_>,
    service: &str,
    limit: usize,
    owner: &str,
    lease_ms: i64,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let now = now_ms();
    let at = ms_to_rfc3339(now);
    let rows = tx
        .query(
            "UPDATE paddock_jobs SET
               history = CASE WHEN state = 'running'
                 THEN history || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', $5::text,
                      'outcome', 'interrupted', 'cause', jsonb_build_object('kind', 'lease_expired', 'owner', owner)))
                 ELSE history END,
               state = 'running', attempts = attempts + 1, started_ms = $1, owner = $2, lease_until_ms = $1 + $6
             WHERE seq IN (
               SELECT seq FROM paddock_jobs
               WHERE service = $3 AND ((state = 'queued' AND run_after_ms <= $1) OR (state = 'running' AND lease_until_ms < $1))
               ORDER BY run_after_ms, seq LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING id, method, content_type, body, failures, seq",
            &[&now, &owner, &service, &(limit as i64), &at, &lease_ms],
        )
        .await?;
    let mut out: Vec<(i64, Claimed)> = rows
        .iter()
        .map(|r| {
            (
                r.get(5),
                Claimed {
                    id: r.get(0),
                    method: r.get(1),
                    content_type: r.get(2),
                    body: r.get(3),
                    failures: r.get::<_, i32>(4) as u32,
                },
            )
        })
        .collect();
    out.sort_by_key(|(seq, _)| *seq);
    Ok(out.into_iter().map(|(_, c)| c).collect())
}

async fn finish_job(
    tx: &Transaction<'_>,
    id: &str,
    finish: Finish,
    owner: &str,
) -> Result<u64, tokio_postgres::Error> {
    let now = now_ms();
    let at = ms_to_rfc3339(now);
    match finish {
        Finish::Done { content_type, body } => {
            tx.execute(
                "UPDATE paddock_jobs SET state = 'done', result = $2, result_content_type = $3, finished_ms = $4, owner = NULL,
                   lease_until_ms = NULL,
                   history = history || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', $5::text, 'outcome', 'done'))
                 WHERE id = $1 AND state = 'running' AND owner = $6",
                &[&id, &body, &content_type, &now, &at, &owner],
            )
            .await
        }
        Finish::Failed {
            cause,
            permanent,
            backoff_ms,
        } => {
            let dead = "($2::boolean OR failures + 1 >= max_attempts)";
            tx.execute(
                &format!(
                    "UPDATE paddock_jobs SET failures = failures + 1, owner = NULL, lease_until_ms = NULL,
                       state = CASE WHEN {dead} THEN 'dead' ELSE 'queued' END,
                       finished_ms = CASE WHEN {dead} THEN $3::bigint ELSE NULL END,
                       run_after_ms = $3::bigint + $4::bigint,
                       history = history || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', $5::text,
                         'outcome', 'failed', 'cause', $6::text::jsonb))
                     WHERE id = $1 AND state = 'running' AND owner = $7"
                ),
                &[&id, &permanent, &now, &(backoff_ms as i64), &at, &cause.to_string().replace("\\u0000", ""), &owner],
            )
            .await
        }
        Finish::Interrupted { why } => {
            tx.execute(
                "UPDATE paddock_jobs SET state = 'queued', owner = NULL, lease_until_ms = NULL, run_after_ms = $2::bigint,
                   history = history || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', $3::text,
                     'outcome', 'interrupted', 'cause', jsonb_build_object('kind', 'daemon_stopped', 'message', $4::text)))
                 WHERE id = $1 AND state = 'running' AND owner = $5",
                &[&id, &now, &at, &why, &owner],
            )
            .await
        }
        Finish::Release { why } => {
            tracing::debug!("job {id} released: {why}");
            tx.execute(
                "UPDATE paddock_jobs SET state = 'queued', attempts = attempts - 1, owner = NULL, lease_until_ms = NULL, run_after_ms = $2
                 WHERE id = $1 AND state = 'running' AND owner = $3",
                &[&id, &now, &owner],
            )
            .await
        }
    }
}

async fn transition(
    tx: &Transaction<'_>,
    id: &str,
    sql: &str,
    what: &str,
) -> Result<JobView, JobError> {
    let n = tx.execute(sql, &[&id, &now_ms()]).await.map_err(db)?;
    let v = get(tx, id).await?;
    if n == 0 {
        return Err(JobError::Conflict {
            id: id.to_string(),
            state: v.state,
            what: what.to_string(),
        });
    }
    Ok(v)
}

async fn list(tx: &Transaction<'_>, q: ListQuery) -> Result<Page, JobError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000) as i64;
    let rows = tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM paddock_jobs WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR service = $2)
                 AND seq > $3 ORDER BY seq LIMIT $4"
            ),
            &[&q.state, &q.service, &q.after.unwrap_or(0), &(limit + 1)],
        )
        .await
        .map_err(db)?;
    let jobs: Vec<JobView> = rows.iter().map(view).collect();
    Ok(page(jobs, limit))
}
