//! Why the job store could not do what it was asked, by kind: a caller can tell a
//! busy database (try again) from one it cannot reach or that is in use by another
//! instance (say so), and from any other failure.

/// A job store's failure. Its text is the database's own words, with the path or
/// address where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another writer holds the database: SQLite busy or locked; PostgreSQL's
    /// serialization failure, deadlock or lock timeout. Trying again can work.
    #[error("{0} (the job store is busy; try again)")]
    Busy(String),
    /// The database cannot be reached: a connection lost or refused, a file that
    /// cannot be opened, the store's task gone.
    #[error("{0}")]
    Unreachable(String),
    /// The store is in use by another paddock instance.
    #[error("{0}")]
    InUse(String),
    /// Anything else the database said.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for StoreError {
    fn from(s: String) -> StoreError {
        StoreError::Failed(s)
    }
}

impl From<&str> for StoreError {
    fn from(s: &str) -> StoreError {
        StoreError::Failed(s.to_string())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked) => StoreError::Busy(e.to_string()),
            Some(CannotOpen | NotADatabase | ReadOnly | PermissionDenied | DiskFull) => {
                StoreError::Unreachable(e.to_string())
            }
            _ => StoreError::Failed(e.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        use tokio_postgres::error::SqlState;
        let text = describe_pg(&e);
        if e.is_closed() {
            return StoreError::Unreachable(text);
        }
        match e.code() {
            Some(c)
                if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::LOCK_NOT_AVAILABLE =>
            {
                StoreError::Busy(text)
            }
            Some(c) if c.code().starts_with("08") => StoreError::Unreachable(text),
            None => StoreError::Unreachable(text),
            _ => StoreError::Failed(text),
        }
    }
}

/// A PostgreSQL error in words: the server's severity and message, or the client's.
pub(super) fn describe_pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn sqlite_busy_and_unopenable_are_told_apart() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        );
        assert!(matches!(StoreError::from(busy), StoreError::Busy(_)));
        let open = rusqlite::Connection::open("/proc/no/such/folder/jobs.db").unwrap_err();
        let e = StoreError::from(open);
        assert!(matches!(e, StoreError::Unreachable(_)), "{e:?}");
        let other = rusqlite::Error::QueryReturnedNoRows;
        assert!(matches!(StoreError::from(other), StoreError::Failed(_)));
    }
}
