//! A job's state and the transitions between them, typed: the stores read the state
//! from their rows as a `JobState`, it is shown as its lowercase name, and every
//! statement that changes a state takes its states from [`Transition`] (so the
//! table below is the one place the job lifecycle is written).
//!
//! ```text
//! scheduled ──due (at its time)──▶ queued      (enqueued with a delay or run_at)
//! queued ──claim──▶ claimed ──start──▶ running ──done──▶ done
//!   │  ▲              │ │                │ failed, attempts left ──▶ queued (after job_backoff)
//!   │  │              │ │                │ failed, none left (or permanent) ──▶ dead
//!   │  │              │ │                │ released / interrupted ──▶ queued
//!   │  │              │ └─released ─────────────────────────────────▶ queued
//!   │  │              │ (lease expired: claimed or running ──take over──▶ claimed)
//!   │  └──retry── dead, cancelled
//!   └──cancel──▶ cancelled ◀──cancel── scheduled, claimed, running
//! ```
//!
//! `claimed`: a daemon's pump took the job ahead (it claims in batches) and no
//! worker has it yet: it can still be cancelled. `running`: a worker has it; each
//! start counts an attempt.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    /// Enqueued to run at a later time (`delay`, `run_at`): not claimed before it.
    Scheduled,
    Claimed,
    Running,
    Done,
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Scheduled,
        JobState::Claimed,
        JobState::Running,
        JobState::Done,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The states a job never leaves on its own: what retention deletes.
    pub const FINISHED: [JobState; 3] = [JobState::Done, JobState::Dead, JobState::Cancelled];

    /// `'done', 'dead', 'cancelled'`: the finished states as an SQL list.
    pub fn finished_sql() -> String {
        sql_list(&JobState::FINISHED)
    }

    /// As stored and shown: `queued`, `claimed`, `running`, `done`, `dead`,
    /// `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Scheduled => "scheduled",
            JobState::Claimed => "claimed",
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

/// Every way a job's state changes, with the states it leaves from and goes to.
/// The stores build their statements from this table (`WHERE state IN (from)`,
/// `SET state = to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A scheduled job's time came: it joins the queue (just before a claim).
    Due,
    /// The pump takes a queued job whose backoff is over (ahead of a worker).
    Claim,
    /// The pump hands a claimed job to a worker: an attempt starts.
    Start,
    /// A PostgreSQL node takes a claimed or running job whose owner's lease expired.
    TakeOver,
    /// The attempt succeeded; its result is stored with this change.
    Complete,
    /// The attempt failed and attempts are left: queued again after a backoff.
    FailAgain,
    /// The attempt failed and none are left (or the failure is permanent).
    FailDead,
    /// The job never reached a worker (the daemon stopped with it claimed, or the
    /// dispatcher could not take it): queued again, not counted.
    Release,
    /// The daemon stopped or died with the job: queued again, not counted.
    Interrupt,
    /// `POST /v1/jobs/{id}/cancel`.
    Cancel,
    /// `POST /v1/jobs/{id}/retry`.
    Retry,
}

impl Transition {
    #[cfg(test)]
    pub const ALL: [Transition; 11] = [
        Transition::Due,
        Transition::Claim,
        Transition::Start,
        Transition::TakeOver,
        Transition::Complete,
        Transition::FailAgain,
        Transition::FailDead,
        Transition::Release,
        Transition::Interrupt,
        Transition::Cancel,
        Transition::Retry,
    ];

    /// The states a job may be in for this change to apply.
    pub fn from(self) -> &'static [JobState] {
        use JobState::*;
        match self {
            Transition::Due => &[Scheduled],
            Transition::Claim => &[Queued],
            Transition::Start => &[Claimed],
            Transition::Cancel => &[Queued, Scheduled, Claimed, Running],
            Transition::TakeOver | Transition::Release => &[Claimed, Running],
            Transition::Complete
            | Transition::FailAgain
            | Transition::FailDead
            | Transition::Interrupt => &[Running],
            Transition::Retry => &[Dead, Cancelled],
        }
    }

    /// The state it leaves the job in.
    pub fn to(self) -> JobState {
        match self {
            Transition::Claim | Transition::TakeOver => JobState::Claimed,
            Transition::Start => JobState::Running,
            Transition::Complete => JobState::Done,
            Transition::FailDead => JobState::Dead,
            Transition::Cancel => JobState::Cancelled,
            Transition::FailAgain
            | Transition::Release
            | Transition::Interrupt
            | Transition::Retry
            | Transition::Due => JobState::Queued,
        }
    }

    /// Whether the change applies to a job in `state`.
    #[cfg(test)]
    pub fn applies_to(self, state: JobState) -> bool {
        self.from().contains(&state)
    }

    /// Why an API call was refused when the job was in another state.
    pub fn refusal(self) -> String {
        let names: Vec<&str> = self.from().iter().map(|s| s.as_str()).collect();
        let verb = match self {
            Transition::Cancel => "cancelled",
            Transition::Retry => "retried",
            _ => "changed this way",
        };
        let names = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        };
        format!("only a {names} job can be {verb}")
    }

    /// `template` with `{to}` replaced by the target state and `{from}` by the
    /// source states (an SQL literal and list).
    pub fn sql(self, template: &str) -> String {
        template
            .replace("{to}", &self.to_sql())
            .replace("{from}", &self.sources_sql())
    }

    /// `'a', 'b'`: the `from` states as an SQL list (the names are fixed words).
    pub fn sources_sql(self) -> String {
        sql_list(self.from())
    }

    /// `'x'`: the `to` state as an SQL literal.
    pub fn to_sql(self) -> String {
        sql_list(&[self.to()])
    }
}

fn sql_list(states: &[JobState]) -> String {
    let quoted: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
    quoted.join(", ")
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

    #[test]
    fn the_table_is_the_lifecycle() {
        use JobState::*;
        // Done is final; every other state can be left.
        for s in JobState::ALL {
            let leaves = Transition::ALL.iter().any(|t| t.applies_to(s));
            assert_eq!(leaves, s != Done, "{s}");
        }
        // Every state but the two a job is enqueued in is reached by some change.
        for s in JobState::ALL {
            let reached = Transition::ALL.iter().any(|t| t.to() == s);
            assert!(
                reached || s == Queued || s == Scheduled,
                "{s} is unreachable"
            );
        }
        // A scheduled job joins the queue at its time, or is cancelled before it;
        // a claim takes queued jobs only (its index gives the order, no sort).
        assert!(Transition::Due.applies_to(Scheduled));
        assert!(!Transition::Claim.applies_to(Scheduled));
        assert!(Transition::Cancel.applies_to(Scheduled));
        // Only the API's two changes start outside `running` or `queued`.
        assert!(Transition::Retry.applies_to(Dead));
        assert!(Transition::Retry.applies_to(Cancelled));
        assert!(!Transition::Retry.applies_to(Done));
        // A running job is cancelled too: its worker is told (or killed).
        assert!(Transition::Cancel.applies_to(Running));
        assert!(!Transition::Cancel.applies_to(Done));
        // A job claimed ahead, with no worker yet, can be cancelled.
        assert!(Transition::Cancel.applies_to(Claimed));
        assert_eq!(Transition::Claim.to(), Claimed);
        assert_eq!(Transition::Start.to(), Running);
        assert_eq!(
            Transition::Cancel.refusal(),
            "only a queued, scheduled, claimed or running job can be cancelled"
        );
        assert_eq!(
            Transition::Retry.refusal(),
            "only a dead or cancelled job can be retried"
        );
        assert_eq!(Transition::Retry.sources_sql(), "'dead', 'cancelled'");
        assert_eq!(Transition::Complete.to_sql(), "'done'");
    }
}
