//! Where a config error is, and the bounds every duration and number is held to.
//!
//! Why one place: every value that cannot work (a 0s deadline that kills every
//! worker, 10^8 workers) is refused while parsing, naming the file, the line, the
//! column and the key; the instance's and the services' builders share these
//! checks instead of each writing its own.

use std::path::Path;
use std::time::Duration;

use super::values::{Dur, MAX_DURATION, MIN_DURATION, humanize};
use super::{ConfigError, locate};

/// The config file being checked: its path and text, to locate errors in.
pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Checker<'_> {
    /// An error at a byte offset of the text, about `key`.
    pub(super) fn invalid(&self, offset: usize, key: String, message: String) -> ConfigError {
        let (line, column) = locate::line_col(self.text, offset);
        ConfigError::Invalid {
            file: self.path.to_path_buf(),
            line,
            column,
            key,
            message,
        }
    }

    /// An error about `table.key`, located where the key is written (or its
    /// table, where it is not).
    pub(super) fn at(&self, table: &str, key: &str, message: String) -> ConfigError {
        let offset = locate::find_key(self.text, table, key);
        let full = if key.is_empty() {
            table.to_string()
        } else {
            format!("{table}.{key}")
        };
        self.invalid(offset, full, message)
    }

    /// A duration (or its default) between 1ms and 720h.
    pub(super) fn dur(
        &self,
        table: &str,
        key: &str,
        v: Option<Dur>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = v.map(|d| d.0).unwrap_or(default);
        if d < MIN_DURATION || d > MAX_DURATION {
            return Err(self.at(
                table,
                key,
                format!(
                    "{} is out of range: write between 1ms and 720h (30 days)",
                    humanize(d)
                ),
            ));
        }
        Ok(d)
    }

    /// A number (or its default) between `min` and `max`.
    pub(super) fn num(
        &self,
        table: &str,
        key: &str,
        v: Option<u64>,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let n = v.unwrap_or(default);
        if n < min || n > max {
            return Err(self.at(
                table,
                key,
                format!("{n} is out of range: write between {min} and {max}"),
            ));
        }
        Ok(n)
    }
}
