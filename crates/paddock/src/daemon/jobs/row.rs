//! One mapping from a stored job row to the [`JobView`] the API shows, used by both
//! stores: they select the same columns (`COLUMNS`, written in SQL both dialects
//! read) and expose their rows through [`Cells`], a handful of typed getters.

use serde_json::json;

use super::{JobState, JobView, StoreError, ms_to_rfc3339};

/// The columns `view` reads, in its order. The casts make both dialects hand out
/// the same types: 64-bit integers and the history as JSON text.
pub(super) const COLUMNS: &str = "id, seq, service, method, state, CAST(attempts AS BIGINT), \
     CAST(failures AS BIGINT), CAST(max_attempts AS BIGINT), idempotency_key, created_ms, started_ms, \
     finished_ms, run_after_ms, CAST(history AS TEXT), result_content_type, owner, \
     CAST(priority AS BIGINT)";

/// A row's cells, by position, as the few types a job row holds.
pub(super) trait Cells {
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn state(&self, i: usize) -> Result<JobState, StoreError>;
}

/// A row selected with `COLUMNS`, as the API shows it.
pub(super) fn view(r: &impl Cells) -> Result<JobView, StoreError> {
    let count = |i| r.int(i).map(|n| u32::try_from(n).unwrap_or(0));
    Ok(JobView {
        id: r.text(0)?,
        seq: r.int(1)?,
        service: r.text(2)?,
        method: r.text(3)?,
        state: r.state(4)?,
        attempts: count(5)?,
        failures: count(6)?,
        max_attempts: count(7)?,
        idempotency_key: r.opt_text(8)?,
        created_at: ms_to_rfc3339(r.int(9)?),
        started_at: r.opt_int(10)?.map(ms_to_rfc3339),
        finished_at: r.opt_int(11)?.map(ms_to_rfc3339),
        run_after: ms_to_rfc3339(r.int(12)?),
        history: serde_json::from_str(&r.text(13)?).unwrap_or(json!([])),
        result_content_type: r.opt_text(14)?,
        owner: r.opt_text(15)?,
        priority: i32::try_from(r.int(16)?).unwrap_or(0),
    })
}

/// `Cells` for a driver's row type, through its fallible typed getter.
macro_rules! cells {
    ($row:ty, $get:ident) => {
        impl Cells for $row {
            fn text(&self, i: usize) -> Result<String, StoreError> {
                self.$get(i).map_err(|e| StoreError::Failed(e.to_string()))
            }
            fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
                self.$get(i).map_err(|e| StoreError::Failed(e.to_string()))
            }
            fn int(&self, i: usize) -> Result<i64, StoreError> {
                self.$get(i).map_err(|e| StoreError::Failed(e.to_string()))
            }
            fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
                self.$get(i).map_err(|e| StoreError::Failed(e.to_string()))
            }
            fn state(&self, i: usize) -> Result<JobState, StoreError> {
                self.$get(i).map_err(|e| StoreError::Failed(e.to_string()))
            }
        }
    };
}

cells!(rusqlite::Row<'_>, get);
cells!(tokio_postgres::Row, try_get);
