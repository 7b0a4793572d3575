//! The embedded job store: SQLite (WAL, `synchronous = FULL`) in the instance's
//! folder, owned by one thread.
//!
//! This file holds only SQLite's dialect: its schema, its statements and its
//! connection; the rules are in `apply.rs`, the group-commit loop in `group_commit.rs`.
//!
//! Invariants:
//! - the connection is opened after the daemon forked, and used on this store's
//!   thread only (a current-thread runtime runs the group loop there);
//! - each group is one `IMMEDIATE` transaction and one fsync;
//! - at open, jobs left `running` are queued again at once: the instance lock proves
//!   their owner is dead, no timeout needed;
//! - as on PostgreSQL, a claim raises the job's `claims` count and an outcome is
//!   recorded only under the claim that ran the attempt (`claims = ?k`), so a late
//!   result of an attempt that was cancelled, then retried and claimed again, is
//!   dropped.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::mpsc;

use super::apply::{ApiChange, Keyed, Stored, Tx, apply, change_sql};
use super::group_commit::{self, Applied, Dialect};
use super::row::{COLUMNS, view};
use super::schema;
use super::state::Transition;
use super::stats::StoreStats;
use super::{
    Claimed, Cmd, Finish, JobError, JobState, JobView, ListQuery, NewJob, Store, StoreError,
    ms_to_rfc3339, now_ms,
};

/// Pages one compaction step gives back (4 KiB each): a step is a few
/// milliseconds, so enqueues never wait long behind one.
const COMPACT_STEP: u32 = 256;

/// Jobs whose daemon died (queued again at open), recorded as interrupted: running
/// ones, and claimed ones too, since one may have been handed to a worker an
/// instant before its start was recorded (at-least-once, docs/jobs.md).
static RECOVER: LazyLock<String> = LazyLock::new(|| {
    Transition::Interrupt
        .sql(
            "UPDATE jobs SET state = {to}, owner = NULL, run_after_ms = ?1,
           history = json_insert(history, '$[#]', json_object('attempt', attempts, 'at', ?2,
             'outcome', 'interrupted', 'cause', json_object('kind', 'daemon_died', 'owner', owner, 'state', state)))
         WHERE state IN ({owned})",
        )
        .replace("{owned}", &Transition::TakeOver.sources_sql())
});

static CLAIM: LazyLock<String> = LazyLock::new(|| {
    Transition::Claim.sql(
        "UPDATE jobs SET state = {to}, owner = ?2, claims = claims + 1
         WHERE seq IN (SELECT seq FROM jobs WHERE service = ?3 AND state IN ({from}) AND run_after_ms <= ?1
                       ORDER BY priority DESC, run_after_ms, seq LIMIT ?4)
         RETURNING id, method, content_type, body, failures, seq, priority, claims",
    )
});

/// Scheduled jobs of a service whose time came join the queue (before a claim).
static DUE: LazyLock<String> = LazyLock::new(|| {
    Transition::Due.sql(
        "UPDATE jobs SET state = {to} WHERE service = ?1 AND state IN ({from}) AND run_after_ms <= ?2",
    )
});

static START: LazyLock<String> = LazyLock::new(|| {
    Transition::Start.sql(
        "UPDATE jobs SET state = {to}, attempts = attempts + 1, started_ms = ?2
         WHERE seq = ?1 AND state IN ({from}) AND claims = ?3",
    )
});

static COMPLETE: LazyLock<String> = LazyLock::new(|| {
    Transition::Complete.sql(
        "UPDATE jobs SET state = {to}, result = ?2, result_content_type = ?3, finished_ms = ?4, owner = NULL,
           history = json_insert(history, '$[#]', json_object('attempt', attempts, 'at', ?5, 'outcome', 'done'))
         WHERE id = ?1 AND state IN ({from}) AND claims = ?6",
    )
});

static FAIL: LazyLock<String> = LazyLock::new(|| {
    // Dead when the failure is permanent or no attempt is left, queued otherwise.
    Transition::FailAgain
        .sql(
            "UPDATE jobs SET failures = failures + 1, owner = NULL,
           state = CASE WHEN ?2 OR failures + 1 >= max_attempts THEN {dead} ELSE {to} END,
           finished_ms = CASE WHEN ?2 OR failures + 1 >= max_attempts THEN ?3 ELSE NULL END,
           run_after_ms = ?3 + ?4,
           history = json_insert(history, '$[#]', json_object('attempt', attempts, 'at', ?5, 'outcome', 'failed', 'cause', json(?6)))
         WHERE id = ?1 AND state IN ({from}) AND claims = ?7",
        )
        .replace("{dead}", &Transition::FailDead.to_sql())
});

static INTERRUPT: LazyLock<String> = LazyLock::new(|| {
    Transition::Interrupt.sql(
        "UPDATE jobs SET state = {to}, owner = NULL, run_after_ms = ?2,
           history = json_insert(history, '$[#]', json_object('attempt', attempts, 'at', ?3,
             'outcome', 'interrupted', 'cause', json_object('kind', 'daemon_stopped', 'message', ?4)))
         WHERE id = ?1 AND state IN ({from}) AND claims = ?5",
    )
});

static RELEASE: LazyLock<String> = LazyLock::new(|| {
    // A started job that never reached a worker does not count its start.
    Transition::Release.sql(&format!(
        "UPDATE jobs SET state = {{to}}, owner = NULL, run_after_ms = ?2,
           attempts = attempts - CASE WHEN state = '{}' THEN 1 ELSE 0 END
         WHERE id = ?1 AND state IN ({{from}}) AND claims = ?3",
        JobState::Running.as_str()
    ))
});

static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO jobs (id, service, method, content_type, body, state, max_attempts, idempotency_key, created_ms, run_after_ms, priority)
         VALUES (?1, ?2, ?3, ?4, ?5, CASE WHEN ?9 > ?8 THEN '{}' ELSE '{}' END, ?6, ?7, ?8, max(?9, ?8), ?10)",
        JobState::Scheduled.as_str(),
        JobState::Queued.as_str()
    )
});

/// Opens (creating) the store at `path`; returns it and how many interrupted jobs
/// were queued again.
pub fn open(path: &Path, owner: String) -> Result<(Store, usize), StoreError> {
    // One daemon per database file: two instances sharing `store = "sqlite:PATH"`
    // would take each other's running jobs for a dead daemon's.
    let lock = lock_store(
        path,
        " by another paddock instance",
        "give each instance its own store",
    )?;
    let what = |e: rusqlite::Error| in_words(path, "job store", e);
    let conn = Connection::open(path).map_err(what)?;
    // First of all (it only takes on a file with nothing in it yet, not even the
    // WAL setting below): pruned jobs' pages can then be given back to the file
    // system (docs/jobs.md, "Retention"). An older file keeps auto_vacuum off until
    // it is compacted once by hand.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .map_err(what)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(what)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(what)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(what)?;
    migrate(&conn, path).map_err(|e| match e {
        MigrateError::Sql(e) => what(e),
        MigrateError::Store(e) => e,
    })?;
    let recovered = conn
        .execute(&RECOVER, params![now_ms(), ms_to_rfc3339(now_ms())])
        .map_err(what)?;
    let path = path.to_path_buf();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| StoreError::Failed(format!("job store runtime: {e}")))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let finishes = std::sync::Arc::new(super::finishes::Finishes::default());
    let woken = finishes.clone();
    std::thread::Builder::new()
        .name("paddock-jobs".into())
        .spawn(move || {
            let _lock = lock; // held for as long as the store is open
            runtime.block_on(group_commit::run(rx, Sqlite { conn, owner, path }, woken))
        })
        .map_err(|e| StoreError::Failed(format!("job store thread: {e}")))?;
    Ok((Store::new(tx, finishes), recovered))
}

enum MigrateError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

/// Brings the file's schema to [`schema::VERSION`] (`PRAGMA user_version`), in one
/// transaction; refuses a newer one.
fn migrate(conn: &Connection, path: &Path) -> Result<(), MigrateError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(MigrateError::Sql)?;
    let name = path.display().to_string();
    let pending = schema::pending(version, &name).map_err(MigrateError::Store)?;
    if pending.is_empty() {
        return Ok(());
    }
    // A new file says nothing: only an upgrade of an existing store is news.
    let existed = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(MigrateError::Sql)?
        > 0;
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(MigrateError::Sql)?;
    let applied = (|| {
        for m in pending {
            conn.execute_batch(m.sqlite)?;
        }
        conn.pragma_update(None, "user_version", schema::VERSION)?;
        conn.execute_batch("COMMIT")
    })();
    if let Err(e) = applied {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(MigrateError::Sql(e));
    }
    if existed {
        tracing::info!("{}", schema::upgraded(&name, version.max(1), pending));
    }
    Ok(())
}

/// The store's lock (`PATH.db.lock`), held by whoever has the file open; an error
/// saying who (`by`) and what to do (`fix`) when someone else holds it.
fn lock_store(path: &Path, by: &str, fix: &str) -> Result<paddock_sys::lock::HeldLock, StoreError> {
    let lock_path = path.with_extension("db.lock");
    paddock_sys::lock::try_acquire(&lock_path, std::time::Duration::from_millis(300))
        .map_err(|e| StoreError::Unreachable(e.to_string()))?
        .ok_or_else(|| {
            StoreError::InUse(format!(
                "job store {} is in use{by} (its lock {} is held); {fix}",
                path.display(),
                lock_path.display()
            ))
        })
}

/// A database error at `path` in words, its kind kept.
fn in_words(path: &Path, what: &str, e: rusqlite::Error) -> StoreError {
    match StoreError::from(e) {
        StoreError::Busy(m) => StoreError::Busy(format!("{what} {}: {m}", path.display())),
        StoreError::Unreachable(m) => {
            StoreError::Unreachable(format!("{what} {}: {m}", path.display()))
        }
        StoreError::InUse(m) => StoreError::InUse(m),
        StoreError::Failed(m) => StoreError::Failed(format!("{what} {}: {m}", path.display())),
    }
}

/// The file's size with its WAL.
fn size_on_disk(path: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(p).ok()
        })
        .map(|m| m.len())
        .sum()
}

/// `paddock jobs compact`: the one-time compaction of a database made before
/// retention (auto_vacuum off), with the daemon stopped: turns incremental vacuum
/// on and runs a full `VACUUM`. Returns the size before and after.
pub fn compact_offline(path: &Path) -> Result<(u64, u64), StoreError> {
    let _lock = lock_store(path, "", "stop the instance using it first")?;
    let what = |e: rusqlite::Error| in_words(path, "compacting job store", e);
    let before = size_on_disk(path);
    let conn = Connection::open(path).map_err(what)?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .map_err(what)?;
    conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
        .map_err(what)?;
    drop(conn);
    Ok((before, size_on_disk(path)))
}

/// The connection, owned by the store's thread.
struct Sqlite {
    conn: Connection,
    owner: String,
    path: PathBuf,
}

impl Dialect for Sqlite {
    async fn apply_group(&mut self, cmds: Vec<Cmd>) -> Applied {
        // Compaction runs outside any transaction, after the group commits.
        let (compacts, cmds): (Vec<Cmd>, Vec<Cmd>) =
            cmds.into_iter().partition(|c| matches!(c, Cmd::Compact(_)));
        let mut applied = self.apply_in_transaction(cmds).await;
        for c in compacts {
            if let Cmd::Compact(done) = c {
                let left = self.compact_step();
                applied.replies.push(Box::new(move |_| {
                    let _ = done.send(left);
                }));
            }
        }
        applied
    }
}

impl Sqlite {
    /// One step of `incremental_vacuum`, and the WAL truncated once no free page is
    /// left; how many free pages are left.
    fn compact_step(&self) -> u64 {
        // Each step of this statement frees one page: step it to the end.
        let step = self
            .conn
            .prepare_cached(&format!("PRAGMA incremental_vacuum({COMPACT_STEP})"))
            .and_then(|mut st| {
                let mut rows = st.query([])?;
                while rows.next()?.is_some() {}
                Ok(())
            });
        if let Err(e) = step {
            tracing::warn!("job store {}: incremental vacuum: {e}", self.path.display());
            return 0;
        }
        let free: i64 = self
            .conn
            .pragma_query_value(None, "freelist_count", |r| r.get(0))
            .unwrap_or(0);
        // A file made without auto_vacuum keeps its free pages: nothing more to do.
        let auto: i64 = self
            .conn
            .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
            .unwrap_or(0);
        if free > 0 && auto == 2 {
            return free as u64;
        }
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!("job store {}: checkpoint: {e}", self.path.display());
        }
        0
    }

    async fn apply_in_transaction(&mut self, cmds: Vec<Cmd>) -> Applied {
        let mut replies = Vec::with_capacity(cmds.len());
        let commit = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => {
                let tx = SqliteTx {
                    tx,
                    owner: &self.owner,
                    path: &self.path,
                };
                for cmd in cmds {
                    replies.push(apply(&tx, cmd).await);
                }
                tx.tx.commit().map_err(StoreError::from)
            }
            Err(e) => {
                // Nothing applied: every command hears of the failure.
                for cmd in cmds {
                    replies.push(super::refused(cmd));
                }
                Err(StoreError::from(e))
            }
        };
        Applied {
            replies,
            commit,
            again: vec![],
        }
    }
}

/// The group's transaction.
struct SqliteTx<'c> {
    tx: Transaction<'c>,
    owner: &'c str,
    path: &'c Path,
}

fn store_err(e: rusqlite::Error) -> JobError {
    JobError::Store(StoreError::from(e))
}

impl Tx for SqliteTx<'_> {
    async fn get(&self, id: &str) -> Result<Option<JobView>, JobError> {
        self.tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                |r| Ok(view(r)),
            )
            .optional()
            .map_err(store_err)?
            .transpose()
            .map_err(JobError::Store)
    }

    async fn by_key(&self, service: &str, key: &str) -> Result<Option<Keyed>, JobError> {
        self.tx
            .query_row(
                "SELECT id, method, content_type, body FROM jobs WHERE service = ?1 AND idempotency_key = ?2",
                params![service, key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(store_err)
    }

    async fn insert(&self, id: &str, job: &NewJob, now: i64) -> Result<bool, JobError> {
        self.tx
            .prepare_cached(&INSERT)
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    job.service,
                    job.method,
                    job.content_type,
                    job.body,
                    job.max_attempts,
                    job.idempotency_key,
                    now,
                    job.run_after_ms.unwrap_or(now),
                    job.priority
                ])
            })
            .map_err(store_err)?;
        Ok(true)
    }

    async fn claim(&self, service: &str, limit: usize) -> Result<Vec<(i64, Claimed)>, StoreError> {
        self.tx
            .prepare_cached(&DUE)
            .and_then(|mut s| s.execute(params![service, now_ms()]))
            .map_err(StoreError::from)?;
        let mut stmt = self.tx.prepare_cached(&CLAIM).map_err(StoreError::from)?;
        let rows = stmt
            .query_map(params![now_ms(), self.owner, service, limit as i64], |r| {
                Ok((
                    r.get(5)?,
                    Claimed {
                        id: r.get(0)?,
                        seq: r.get(5)?,
                        method: r.get(1)?,
                        content_type: r.get(2)?,
                        body: r.get(3)?,
                        failures: r.get(4)?,
                        priority: r.get(6)?,
                        claim: r.get(7)?,
                    },
                ))
            })
            .map_err(StoreError::from)?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(StoreError::from)
    }

    async fn finish(&self, id: &str, claim: i64, finish: Finish) -> Result<u64, StoreError> {
        let now = now_ms();
        let at = ms_to_rfc3339(now);
        let tx = &self.tx;
        let n = match finish {
            Finish::Start { seq } => tx
                .prepare_cached(&START)
                .and_then(|mut s| s.execute(params![seq, now, claim])),
            Finish::Done { content_type, body } => tx
                .prepare_cached(&COMPLETE)
                .and_then(|mut s| s.execute(params![id, body, content_type, now, at, claim])),
            Finish::Failed {
                cause,
                permanent,
                backoff_ms,
            } => tx.prepare_cached(&FAIL).and_then(|mut s| {
                s.execute(params![
                    id,
                    permanent,
                    now,
                    backoff_ms as i64,
                    at,
                    cause.to_string(),
                    claim
                ])
            }),
            Finish::Interrupted { why } => tx
                .prepare_cached(&INTERRUPT)
                .and_then(|mut s| s.execute(params![id, now, at, why, claim])),
            Finish::Release { why, after_ms } => {
                tracing::debug!("job {id} released: {why}");
                tx.prepare_cached(&RELEASE)
                    .and_then(|mut s| s.execute(params![id, now + after_ms as i64, claim]))
            }
        };
        n.map(|n| n as u64).map_err(StoreError::from)
    }

    async fn result(&self, id: &str) -> Result<Option<Stored>, JobError> {
        self.tx
            .query_row(
                "SELECT state, result_content_type, result FROM jobs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(store_err)
    }

    async fn prune(&self, service: &str, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_finished
               WHERE service = ?1 AND finished_ms IS NOT NULL AND finished_ms < ?2 AND state IN ({})
               ORDER BY finished_ms LIMIT ?3)",
            JobState::finished_sql()
        );
        self.tx
            .prepare_cached(&sql)
            .and_then(|mut s| s.execute(params![service, before_ms, limit as i64]))
            .map(|n| n as u64)
            .map_err(StoreError::from)
    }

    async fn size(&self) -> Result<u64, StoreError> {
        let pragma = |name: &str| {
            self.tx
                .pragma_query_value(None, name, |r| r.get::<_, i64>(0))
                .map_err(StoreError::from)
        };
        let used = pragma("page_count")? - pragma("freelist_count")?;
        Ok((used.max(0) * pragma("page_size")?) as u64)
    }

    async fn stats(&self) -> Result<StoreStats, JobError> {
        let mut counts = vec![];
        {
            let mut st = self
                .tx
                .prepare_cached("SELECT service, state, count(*) FROM jobs GROUP BY service, state")
                .map_err(store_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(store_err)?;
            for row in rows {
                let (service, state, n) = row.map_err(store_err)?;
                let state = JobState::parse(&state).ok_or_else(|| {
                    JobError::Store(format!("unknown job state {state:?}").into())
                })?;
                counts.push((service, state, n as u64));
            }
        }
        let mut oldest_finished = vec![];
        let services: std::collections::BTreeSet<String> =
            counts.iter().map(|(s, _, _)| s.clone()).collect();
        for service in services {
            let at: Option<i64> = self
                .tx
                .prepare_cached(
                    "SELECT min(finished_ms) FROM jobs INDEXED BY jobs_finished
                     WHERE service = ?1 AND finished_ms IS NOT NULL",
                )
                .and_then(|mut st| st.query_row([&service], |r| r.get(0)))
                .map_err(store_err)?;
            oldest_finished.extend(at.map(|at| (service, at)));
        }
        let bytes = size_on_disk(self.path);
        Ok(StoreStats {
            counts,
            oldest_finished,
            bytes,
        })
    }

    async fn change(&self, id: &str, c: ApiChange) -> Result<u64, JobError> {
        let sql = change_sql("jobs", c).replace('$', "?");
        let n = self
            .tx
            .execute(&sql, params![id, now_ms()])
            .map_err(store_err)?;
        Ok(n as u64)
    }

    async fn list(&self, q: &ListQuery, limit: i64) -> Result<Vec<JobView>, JobError> {
        let mut stmt = self
            .tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR service = ?2) AND seq > ?3
                 ORDER BY seq LIMIT ?4"
            ))
            .map_err(store_err)?;
        let rows = stmt
            .query_map(
                params![q.state, q.service, q.after.unwrap_or(0), limit],
                |r| Ok(view(r)),
            )
            .map_err(store_err)?;
        let mut jobs = vec![];
        for r in rows {
            jobs.push(r.map_err(store_err)?.map_err(JobError::Store)?);
        }
        Ok(jobs)
    }

    async fn tick(
        &self,
        service: &str,
        schedule: &str,
        tick_ms: i64,
        job_id: &str,
    ) -> Result<bool, JobError> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT OR IGNORE INTO schedule_ticks (service, schedule, tick_ms, job_id) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![service, schedule, tick_ms, job_id]))
            .map_err(store_err)?;
        Ok(n == 1)
    }

    async fn last_tick(&self, service: &str, schedule: &str) -> Result<Option<i64>, JobError> {
        self.tx
            .query_row(
                "SELECT max(tick_ms) FROM schedule_ticks WHERE service = ?1 AND schedule = ?2",
                params![service, schedule],
                |r| r.get(0),
            )
            .map_err(store_err)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Finish, JobState, NewJob};

    /// An attempt's outcome is recorded only under the claim that ran it: once the
    /// job failed and was claimed again, the earlier claim's late result changes
    /// nothing, and the new claim's is the job's.
    #[tokio::test]
    async fn an_outcome_counts_only_under_its_own_claim() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = super::open(&dir.path().join("jobs.db"), "me".into()).unwrap();
        let (job, _) = store
            .enqueue(NewJob {
                service: "s".into(),
                method: "predict".into(),
                content_type: "text/plain".into(),
                body: b"x".to_vec(),
                idempotency_key: None,
                max_attempts: 3,
                run_after_ms: None,
                priority: 0,
            })
            .await
            .unwrap();
        let first = store.claim("s", 10).await.pop().unwrap();
        assert_eq!(first.claim, 1);
        store.finish(&first, Finish::Start { seq: first.seq });
        store.finish(
            &first,
            Finish::Failed {
                cause: serde_json::json!({"kind": "test"}),
                permanent: false,
                backoff_ms: 0,
            },
        );
        store.sync().await;
        let again = store.claim("s", 10).await.pop().unwrap();
        assert_eq!((again.id.as_str(), again.claim), (job.id.as_str(), 2));
        store.finish(&again, Finish::Start { seq: again.seq });
        // The first claim's late result, and a late start of it: neither counts.
        let late = |body: &[u8]| Finish::Done {
            content_type: "text/plain".into(),
            body: body.to_vec(),
        };
        store.finish(&first, late(b"late"));
        store.finish(&first, Finish::Start { seq: first.seq });
        store.sync().await;
        let v = store.get(job.id.clone()).await.unwrap();
        assert_eq!((v.state, v.attempts), (JobState::Running, 2), "{v:?}");
        store.finish(&again, late(b"new"));
        store.sync().await;
        let v = store.get(job.id.clone()).await.unwrap();
        assert_eq!(v.state, JobState::Done, "{v:?}");
        assert_eq!(store.result(job.id).await.unwrap().1, b"new");
    }
}
