//! The job store's schema, in versions: each store records the version it is at
//! (SQLite: `PRAGMA user_version`; PostgreSQL: the `paddock_schema` table), and
//! opening a store applies the migrations it lacks, in order, in one transaction,
//! with a line in the daemon's log.
//!
//! Why: a store outlives the paddock that made it; an upgrade must keep every job
//! (and several daemons of different releases may share one PostgreSQL store).
//!
//! Invariants: a migration is never edited once released, only added; version 1
//! is the schema of the first release with durable jobs, written with `IF NOT
//! EXISTS` so that its stores (which recorded no version) take it as already
//! applied; a store at a version newer than [`VERSION`] is refused, naming both.

/// The schema this build writes and reads.
pub const VERSION: i64 = 4;

/// One step of the schema, in each dialect.
#[derive(Debug)]
pub struct Migration {
    pub version: i64,
    /// What it changes, for the log.
    pub what: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

pub const MIGRATIONS: [Migration; 4] = [
    Migration {
        version: 1,
        what: "the jobs table",
        sqlite: "
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
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(service, finished_ms) WHERE finished_ms IS NOT NULL;
",
        postgres: "
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
CREATE INDEX IF NOT EXISTS paddock_jobs_owned ON paddock_jobs(owner) WHERE state IN ('claimed', 'running');
CREATE INDEX IF NOT EXISTS paddock_jobs_finished ON paddock_jobs(service, finished_ms) WHERE finished_ms IS NOT NULL;
",
    },
    Migration {
        version: 2,
        what: "job priorities and scheduled jobs: a priority column, claims by priority",
        sqlite: "
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
DROP INDEX IF EXISTS jobs_queue;
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs(service, state, priority DESC, run_after_ms, seq);
",
        postgres: "
ALTER TABLE paddock_jobs ADD COLUMN IF NOT EXISTS priority INT NOT NULL DEFAULT 0;
DROP INDEX IF EXISTS paddock_jobs_queue;
CREATE INDEX IF NOT EXISTS paddock_jobs_claim ON paddock_jobs(service, state, priority DESC, run_after_ms, seq);
",
    },
    Migration {
        version: 3,
        what: "periodic jobs: one record per schedule and tick, apart from the jobs",
        sqlite: "
CREATE TABLE IF NOT EXISTS schedule_ticks (
  service TEXT NOT NULL,
  schedule TEXT NOT NULL,
  tick_ms INTEGER NOT NULL,
  job_id TEXT NOT NULL,
  PRIMARY KEY (service, schedule, tick_ms)
);
",
        postgres: "
CREATE TABLE IF NOT EXISTS paddock_schedule_ticks (
  service TEXT NOT NULL,
  schedule TEXT NOT NULL,
  tick_ms BIGINT NOT NULL,
  job_id TEXT NOT NULL,
  PRIMARY KEY (service, schedule, tick_ms)
);
",
    },
    Migration {
        version: 4,
        what: "claim numbers: each claim and take-over of a job counts one, and an attempt's outcome is recorded only under the claim that ran it",
        sqlite: "
ALTER TABLE jobs ADD COLUMN claims INTEGER NOT NULL DEFAULT 0;
",
        postgres: "
ALTER TABLE paddock_jobs ADD COLUMN IF NOT EXISTS claims BIGINT NOT NULL DEFAULT 0;
",
    },
];

/// The migrations a store at `version` lacks, in order; an error when it is newer
/// than this build (`store` names it).
pub fn pending(version: i64, store: &str) -> Result<&'static [Migration], super::StoreError> {
    if version > VERSION {
        return Err(super::StoreError::Failed(format!(
            "job store {store} has schema version {version}, newer than this paddock ({}) knows (version {VERSION}): a newer paddock upgraded it; run that release (or a newer one) against it",
            crate::VERSION
        )));
    }
    let first = MIGRATIONS
        .iter()
        .position(|m| m.version > version)
        .unwrap_or(MIGRATIONS.len());
    Ok(&MIGRATIONS[first..])
}

/// The log line for applied migrations.
pub fn upgraded(store: &str, from: i64, applied: &[Migration]) -> String {
    let what: Vec<String> = applied
        .iter()
        .map(|m| format!("{}: {}", m.version, m.what))
        .collect();
    format!(
        "job store {store}: schema upgraded from version {from} to {VERSION} ({})",
        what.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_and_a_newer_store_is_refused() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1);
        }
        assert_eq!(MIGRATIONS.last().unwrap().version, VERSION);
        assert_eq!(pending(0, "s").unwrap().len(), MIGRATIONS.len());
        assert_eq!(pending(1, "s").unwrap()[0].version, 2);
        assert_eq!(pending(2, "s").unwrap().len(), 2);
        assert_eq!(pending(3, "s").unwrap().len(), 1);
        assert!(pending(VERSION, "s").unwrap().is_empty());
        let e = pending(VERSION + 1, "jobs.db").unwrap_err().to_string();
        assert!(
            e.contains(&format!("schema version {}", VERSION + 1)),
            "{e}"
        );
        assert!(e.contains(&format!("(version {VERSION})")), "{e}");
    }
}
