//! `[services.NAME.batch.METHOD]`: an operator's overrides of the limits a batched
//! method's workers announce (docs/configuration.md, "Batching").

use std::collections::BTreeMap;
use std::time::Duration;

use super::model::BatchOverride;
use super::raw::RawBatch;

/// The longest a batch may be held open for more requests.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// The most requests in one batch.
pub const MAX_SIZE: u32 = 4096;

/// Checks and converts the overrides; an error names the method's table and key.
pub(super) fn overrides(
    raw: BTreeMap<String, RawBatch>,
) -> Result<BTreeMap<String, BatchOverride>, (String, &'static str, String)> {
    let mut out = BTreeMap::new();
    for (method, b) in raw {
        let handler_name = (1..=128).contains(&method.len())
            && method
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !handler_name {
            return Err((
                method.clone(),
                "",
                format!("{method:?} is not a handler name (1 to 128 letters, digits or '_')"),
            ));
        }
        if let Some(n) = b.max_size
            && !(1..=MAX_SIZE).contains(&n)
        {
            return Err((
                method,
                "max_size",
                format!("{n} is out of range: write between 1 and {MAX_SIZE}"),
            ));
        }
        let max_wait = b.max_wait.map(|d| d.0);
        if max_wait.is_some_and(|d| d > MAX_WAIT) {
            return Err((
                method,
                "max_wait",
                "is out of range: write between 0ms and 10s".into(),
            ));
        }
        let batch_timeout = b.batch_timeout.map(|d| d.0);
        if batch_timeout.is_some_and(|d| d < Duration::from_millis(1)) {
            return Err((
                method,
                "batch_timeout",
                "is out of range: write at least 1ms".into(),
            ));
        }
        out.insert(
            method,
            BatchOverride {
                max_size: b.max_size.map(|n| n as usize),
                max_wait,
                batch_timeout,
            },
        );
    }
    Ok(out)
}
