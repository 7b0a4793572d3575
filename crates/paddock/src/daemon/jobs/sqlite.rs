//! The embedded job store: SQLite (WAL, `synchronous = FULL`) in the instance's
//! folder, owned by one thread.
//!
//! Invariants:
//! - the connection is opened after the daemon forked, on this thread only;
//! - commands are applied in groups: the thread takes every command waiting, runs
//!   them in one transaction, commits (one fsync), and only then answers — so an
//!   enqueue is acknowledged only once it is durable, and a result is durable before
//!   anyone can see the job as done;
//! - at open, jobs left `running` are queued again at once: the instance lock proves
//!   their owner is dead, no timeout needed.

use std::path::Path;
use std::sync::mpsc;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde_json::json;

use super::{
    Claimed, Cmd, Finish, JobError, JobState, JobView, ListQuery, NewJob, Reply, Store,
    claim_reply, ms_to_rfc3339, new_id, now_ms, page, reply,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  service TEXT NOT NULL,
  method TEXT NOT NULL,
  content_type TEXT NOT NULL,
  body BLOB NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL,
  idempotency_key TEXT,
  created_ms INTEGER NOT NULL,
  started_ms INTEGER,
  finished_ms INTEGER,
  run_after_ms INTEGER NOT NULL,
  owner TEXT,
  history TEXT NOT NULL DEFAULT '[]',
  result BLOB,
  result_content_type TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(service, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(service, state, run_after_ms, seq);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
";

const COLUMNS: &str = "id, seq, service, method, state, attempts, failures, max_attempts, idempotency_key, \
                       created_ms, started_ms, finished_ms, run_after_ms, history, result_content_type, owner";

fn view(r: &Row<'_>) -> rusqlite::Result<JobView> {
    let history: String = r.get(13)?;
    Ok(JobView {
        id: r.get(0)?,
        seq: r.get(1)?,
        service: r.get(2)?,
        method: r.get(3)?,
        state: r.get(4)?,
        attempts: r.get(5)?,
        failures: r.get(6)?,
        max_attempts: r.get(7)?,
        idempotency_key: r.get(8)?,
        created_at: ms_to_rfc3339(r.get(9)?),
        started_at: r.get::<_, Option<i64>>(10)?.map(ms_to_rfc3339),
        finished_at: r.get::<_, Option<i64>>(11)?.map(ms_to_rfc3339),
        run_after: ms_to_rfc3339(r.get(12)?),
        history: serde_json::from_str(&history).unwrap_or(json!([])),
        result_content_type: r.get(14)?,
        owner: r.get(15)?,
    })
}

/// Opens (creating) the store at `path`; returns it and how many interrupted jobs
/// were queued again.
pub fn open(path: &Path, owner: String) -> Result<(Store, usize), String> {
    // One daemon per database file: two instances sharing `store = "sqlite:PATH"`
    // would take each other's running jobs for a dead daemon's.
    let lock_path = path.with_extension("db.lock");
    let lock = paddock_sys::lock::try_acquire(&lock_path, std::time::Duration::from_millis(300))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "job store {} is in use by another paddock instance (its lock {} is held); give each instance its own store",
                path.display(),
                lock_path.display()
            )
        })?;
    let what = |e: rusqlite::Error| format!("job store {}: {e}", path.display());
    let conn = Connection::open(path).map_err(what)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(what)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(what)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(what)?;
    conn.execute_batch(SCHEMA).map_err(what)?;
    let recovered = conn
        .execute(
            "UPDATE jobs SET state = 'queued', owner = NULL, run_after_ms = ?1,
               history = json_insert(history, '$[#]', json_object('attempt', attempts, 'at', ?2,
                 'outcome', 'interrupted', 'cause', json_object('kind', 'daemon_died', 'owner', owner)))
             WHERE state = 'running'",
            params![now_ms(), ms_to_rfc3339(now_ms())],
        )
        .map_err(what)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("paddock-jobs".into())
        .spawn(move || {
            let _lock = lock; // held for as long as the store is open
            run(conn, rx, owner)
        })
        .map_err(|e| format!("job store thread: {e}"))?;
    Ok((Store::Sqlite(tx), recovered))
}

fn run(mut conn: Connection, rx: mpsc::Receiver<Cmd>, owner: String) {
    // Job outcomes whose group failed to commit: they go into the next group, so a
    // transient failure (a full disk being cleared, a busy file) loses no result.
    let mut retry: Vec<(String, Finish)> = vec![];
    loop {
        let mut batch: Vec<Cmd> = if retry.is_empty() {
            match rx.recv() {
                Ok(first) => vec![first],
                Err(_) => return,
            }
        } else {
            std::thread::sleep(std::time::Duration::from_millis(100));
            retry
                .drain(..)
                .map(|(id, finish)| Cmd::Finish { id, finish })
                .collect()
        };
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let finishes: Vec<(String, Finish)> = batch
            .iter()
            .filter_map(|c| match c {
                Cmd::Finish { id, finish } => Some((id.clone(), finish.clone())),
                _ => None,
            })
            .collect();
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for cmd in batch {
                replies.push(apply(&tx, cmd, &owner));
            }
            tx.commit()
        })();
        let err = result.err().map(|e| e.to_string());
        if let Some(e) = &err {
            tracing::error!("job store commit failed: {e}; job outcomes will be written again");
            retry = finishes;
        }
        for r in replies {
            r(err.as_deref());
        }
    }
}

fn store_err(e: rusqlite::Error) -> JobError {
    JobError::Store(e.to_string())
}

fn get(tx: &rusqlite::Transaction<'_>, id: &str) -> Result<JobView, JobError> {
    tx.query_row(
        &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
        [id],
        view,
    )
    .optional()
    .map_err(store_err)?
    .ok_or_else(|| JobError::NotFound(id.to_string()))
}

fn apply(tx: &rusqlite::Transaction<'_>, cmd: Cmd, owner: &str) -> Reply {
    match cmd {
        Cmd::Enqueue(job, r) => reply(r, enqueue(tx, job)),
        Cmd::Claim {
            service,
            limit,
            reply,
        } => {
            let claimed = claim(tx, &service, limit, owner).unwrap_or_else(|e| {
                tracing::error!("claiming jobs of {service}: {e}");
                vec![]
            });
            claim_reply(reply, claimed)
        }
        Cmd::Finish { id, finish } => {
            if let Err(e) = finish_job(tx, &id, finish) {
                tracing::error!("finishing job {id}: {e}");
            }
            Box::new(|_| {})
        }
        Cmd::Get(id, r) => reply(r, get(tx, &id)),
        Cmd::Result(id, r) => {
            let v = (|| {
                let (state, ct, body): (JobState, Option<String>, Option<Vec<u8>>) = tx
                    .query_row(
                        "SELECT state, result_content_type, result FROM jobs WHERE id = ?1",
                        [&id],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(store_err)?
                    .ok_or_else(|| JobError::NotFound(id.clone()))?;
                if state != JobState::Done {
                    return Err(JobError::Conflict {
                        id: id.clone(),
                        state,
                        what: "it has no result".into(),
                    });
                }
                Ok((ct.unwrap_or_default(), body.unwrap_or_default()))
            })();
            reply(r, v)
        }
        Cmd::Cancel(id, r) => {
            let v = transition(
                tx,
                &id,
                "UPDATE jobs SET state = 'cancelled', finished_ms = ?2 WHERE id = ?1 AND state = 'queued'",
                "only a queued job can be cancelled",
            );
            reply(r, v)
        }
        Cmd::Retry(id, r) => {
            let v = transition(
                tx,
                &id,
                "UPDATE jobs SET state = 'queued', failures = 0, run_after_ms = ?2, finished_ms = NULL
                 WHERE id = ?1 AND state IN ('dead', 'cancelled')",
                "only a dead or cancelled job can be retried",
            );
            reply(r, v)
        }
        Cmd::List(q, r) => reply(r, list(tx, q)),
        Cmd::Sync(r) => Box::new(move |_| {
            let _ = r.send(());
        }),
    }
}

fn enqueue(tx: &rusqlite::Transaction<'_>, job: NewJob) -> Result<(JobView, bool), JobError> {
    if let Some(key) = &job.idempotency_key {
        let existing: Option<(String, String, String, Vec<u8>)> = tx
            .query_row(
                "SELECT id, method, content_type, body FROM jobs WHERE service = ?1 AND idempotency_key = ?2",
                params![job.service, key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(store_err)?;
        if let Some((id, method, content_type, body)) = existing {
            if !job.same_request(&method, &content_type, &body) {
                return Err(JobError::KeyReused {
                    key: key.clone(),
                    id,
                });
            }
            return Ok((get(tx, &id)?, false));
        }
    }
    let id = new_id();
    let now = now_ms();
    tx.execute(
        "INSERT INTO jobs (id, service, method, content_type, body, state, max_attempts, idempotency_key, created_ms, run_after_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?8, ?8)",
        params![id, job.service, job.method, job.content_type, job.body, job.max_attempts, job.idempotency_key, now],
    )
    .map_err(store_err)?;
    Ok((get(tx, &id)?, true))
}

fn claim(
    tx: &rusqlite::Transaction<'_>,
    service: &str,
    limit: usize,
    owner: &str,
) -> rusqlite::Result<Vec<Claimed>> {
    let now = now_ms();
    let mut stmt = tx.prepare_cached(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_ms = ?1, owner = ?2
         WHERE seq IN (SELECT seq FROM jobs WHERE service = ?3 AND state = 'queued' AND run_after_ms <= ?1
                       ORDER BY run_after_ms, seq LIMIT ?4)
         RETURNING id, method, content_type, body, failures, seq",
    )?;
    let mut rows: Vec<(i64, Claimed)> = stmt
        .query_map(params![now, owner, service, limit as i64], |r| {
            Ok((
                r.get(5)?,
                Claimed {
                    id: r.get(0)?,
                    method: r.get(1)?,
                    content_type: r.get(2)?,
                    body: r.get(3)?,
                    failures: r.get(4)?,
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    rows.sort_by_key(|(seq, _)| *seq);
    Ok(rows.into_iter().map(|(_, c)| c).collect())
}

fn finish_job(tx: &rusqlite::Transaction<'_>, id: &str, finish: Finish) -> rusqlite::Result<()> {
    let now = now_ms();
    let at = ms_to_rfc3339(now);
    match finish {
        Finish::Done { content_type, body } => {
            tx.prepare_cached(
                "UPDATE jobs SET state = 'done', result = ?2, result_content_type = ?3, finished_ms = ?4, owner = NULL,
                   history = json_insert(history, '$[#]', json_object('attempt', attempts, 'at', ?5, 'outcome', 'done'))
                 WHERE id = ?1 AND state = 'running'",
            )?
            .execute(params![id, body, content_type, now, at])?;
        }
        Finish::Failed {
            cause,
            permanent,
            backoff_ms,
        } => {
            tx.prepare_cached(
                "UPDATE jobs SET failures = failures + 1, owner = NULL,
                   state = CASE WHEN ?2 OR failures + 1 >= max_attempts THEN 'dead' ELSE 'queued' END,
                   finished_ms = CASE WHEN ?2 OR failures + 1 >= max_attempts THEN ?3 ELSE NULL END,
                   run_after_ms = ?3 + ?4,
                   history = json_insert(history, '$[#]', json_object('attempt', attempts, 'at', ?5, 'outcome', 'failed', 'cause', json(?6)))
                 WHERE id = ?1 AND state = 'running'",
            )?
            .execute(params![id, permanent, now, backoff_ms as i64, at, cause.to_string()])?;
        }
        Finish::Interrupted { why } => {
            tx.prepare_cached(
                "UPDATE jobs SET state = 'queued', owner = NULL, run_after_ms = ?2,
                   history = json_insert(history, '$[#]', json_object('attempt', attempts, 'at', ?3,
                     'outcome', 'interrupted', 'cause', json_object('kind', 'daemon_stopped', 'message', ?4)))
                 WHERE id = ?1 AND state = 'running'",
            )?
            .execute(params![id, now, at, why])?;
        }
        Finish::Release { why } => {
            tx.prepare_cached(
                "UPDATE jobs SET state = 'queued', attempts = attempts - 1, owner = NULL, run_after_ms = ?2
                 WHERE id = ?1 AND state = 'running'",
            )?
            .execute(params![id, now])?;
            tracing::debug!("job {id} released: {why}");
        }
    }
    Ok(())
}

fn transition(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    sql: &str,
    what: &str,
) -> Result<JobView, JobError> {
    let n = tx.execute(sql, params![id, now_ms()]).map_err(store_err)?;
    let v = get(tx, id)?;
    if n == 0 {
        return Err(JobError::Conflict {
            id: id.to_string(),
            state: v.state,
            what: what.to_string(),
        });
    }
    Ok(v)
}

fn list(tx: &rusqlite::Transaction<'_>, q: ListQuery) -> Result<super::Page, JobError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000) as i64;
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR service = ?2) AND seq > ?3
             ORDER BY seq LIMIT ?4"
        ))
        .map_err(store_err)?;
    let jobs: Vec<JobView> = stmt
        .query_map(
            params![q.state, q.service, q.after.unwrap_or(0), limit + 1],
            view,
        )
        .map_err(store_err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(store_err)?;
    Ok(page(jobs, limit))
}
