//! A job's state, typed: the stores read it from their rows as a `JobState`, and
//! it is shown as its lowercase name. The lifecycle below is what the stores' SQL
//! does (each in its dialect).
//!
//! ```text
//! queued ──claim──▶ running ──done──▶ done
//!   │  ▲               │ failed, attempts left ──▶ queued (after job_backoff)
//!   │  │               │ failed, none left (or permanent) ──▶ dead
//!   │  │               │ released / interrupted / lease expired ──▶ queued
//!   │  └──retry── dead, cancelled
//!   └──cancel──▶ cancelled
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// As stored and shown: `queued`, `running`, `done`, `dead`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The stored name back (None for anything else).
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl rusqlite::types::FromSql for JobState {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = v.as_str()?;
        JobState::parse(s).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(format!("unknown job state {s:?}").into())
        })
    }
}

impl<'a> tokio_postgres::types::FromSql<'a> for JobState {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let s = <&str as tokio_postgres::types::FromSql>::from_sql(ty, raw)?;
        JobState::parse(s).ok_or_else(|| format!("unknown job state {s:?}").into())
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::FromSql>::accepts(ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(JobState::parse("finished"), None);
    }
}
