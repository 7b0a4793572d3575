//! `[[services.NAME.schedule]]`: periodic jobs (docs/jobs.md, "Periodic jobs").
//!
//! A schedule is a cron expression (five fields, or six with seconds first), a time
//! zone (`UTC`, or a fixed offset such as `+02:00`), the handler and body of the job
//! each tick enqueues, and what to do about ticks missed while no daemon ran
//! (`missed = "skip"` or `"once"`). The expression is parsed here, once, so a typo
//! is a config error with its line, never a schedule that silently never fires.

use std::str::FromStr;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use serde::Deserialize;

/// What a tick does about the ticks missed while no daemon ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// Run from the next tick on.
    Skip,
    /// Run the latest missed tick once, at start, then go on.
    Once,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    name: String,
    cron: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    handler: Option<String>,
    #[serde(default)]
    body: Option<toml::Value>,
    #[serde(default)]
    missed: Option<Missed>,
}

/// A periodic job, checked.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    /// The expression as written (for status and logs).
    pub cron: String,
    pattern: croner::Cron,
    pub offset: FixedOffset,
    pub handler: String,
    /// The job's body: the `body` value as JSON (`{}` when none).
    pub body: Vec<u8>,
    pub missed: Missed,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        (
            &self.name,
            &self.cron,
            self.offset,
            &self.handler,
            &self.body,
            self.missed,
        ) == (
            &other.name,
            &other.cron,
            other.offset,
            &other.handler,
            &other.body,
            other.missed,
        )
    }
}

impl Schedule {
    /// The first tick strictly after `after_ms` (ms since the epoch), or None when
    /// the expression has no more.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let at: DateTime<FixedOffset> = self.offset.timestamp_millis_opt(after_ms).single()?;
        let next = self.pattern.find_next_occurrence(&at, false).ok()?;
        Some(next.timestamp_millis())
    }

    /// The latest tick at or before `at_ms`, or None.
    pub fn latest_at_or_before(&self, at_ms: i64) -> Option<i64> {
        let at: DateTime<FixedOffset> = self.offset.timestamp_millis_opt(at_ms).single()?;
        let prev = self.pattern.find_previous_occurrence(&at, true).ok()?;
        Some(prev.timestamp_millis())
    }
}

/// `UTC` (or `Z`), or a fixed offset `+HH:MM` / `-HH:MM`.
fn offset(text: &str) -> Option<FixedOffset> {
    if text.eq_ignore_ascii_case("utc") || text == "Z" {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// Checks the schedules of one service; an error names the entry (by index) and key.
pub(super) fn check(raw: Vec<RawSchedule>) -> Result<Vec<Schedule>, (usize, &'static str, String)> {
    let mut out: Vec<Schedule> = vec![];
    for (i, r) in raw.into_iter().enumerate() {
        let name_ok = (1..=64).contains(&r.name.len())
            && r.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err((
                i,
                "name",
                format!(
                    "{:?}: a schedule's name is 1 to 64 letters, digits, '_' or '-'",
                    r.name
                ),
            ));
        }
        if out.iter().any(|s| s.name == r.name) {
            return Err((i, "name", format!("a second schedule named {:?}", r.name)));
        }
        let fields = r.cron.split_whitespace().count();
        let pattern = match croner::Cron::from_str(&r.cron) {
            Ok(p) if fields == 5 || fields == 6 => p,
            Ok(_) => {
                return Err((
                    i,
                    "cron",
                    format!(
                        "{:?} has {fields} fields: write 5 (minute hour day month weekday) or 6 (with seconds first)",
                        r.cron
                    ),
                ));
            }
            Err(e) => {
                return Err((
                    i,
                    "cron",
                    format!("{:?} is not a cron expression: {e}", r.cron),
                ));
            }
        };
        let zone = r.timezone.as_deref().unwrap_or("UTC");
        let offset = offset(zone).ok_or_else(|| {
            (
                i,
                "timezone",
                format!("{zone:?}: write \"UTC\" or a fixed offset such as \"+02:00\""),
            )
        })?;
        let handler = r.handler.unwrap_or_else(|| "predict".into());
        let body = match &r.body {
            None => b"{}".to_vec(),
            Some(v) => serde_json::to_vec(v).map_err(|e| (i, "body", e.to_string()))?,
        };
        let s = Schedule {
            name: r.name,
            cron: r.cron,
            pattern,
            offset,
            handler,
            body,
            missed: r.missed.unwrap_or(Missed::Skip),
        };
        if s.next_after(Utc::now().timestamp_millis()).is_none() {
            return Err((i, "cron", format!("{:?} never fires again", s.cron)));
        }
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(toml_text: &str) -> Result<Schedule, (usize, &'static str, String)> {
        let raw: RawSchedule = toml::from_str(toml_text).unwrap();
        check(vec![raw]).map(|mut v| v.remove(0))
    }

    #[test]
    fn ticks_follow_the_expression_in_its_offset() {
        let s = one("name = \"n\"\ncron = \"*/5 * * * *\"").unwrap();
        // 2026-12-06T10:03:00Z -> 10:05:00Z.
        let t = 1_796_551_380_000;
        assert_eq!(s.next_after(t), Some(t + 120_000));
        assert_eq!(s.latest_at_or_before(t), Some(t - 180_000));
        let secs = one("name = \"n\"\ncron = \"*/2 * * * * *\"").unwrap();
        assert_eq!(secs.next_after(t), Some(t + 2000));
        // 09:00 at +02:00 is 07:00Z.
        let s = one("name = \"n\"\ncron = \"0 9 * * *\"\ntimezone = \"+02:00\"").unwrap();
        let next = s.next_after(t).unwrap();
        assert_eq!((next / 1000) % 86400, 7 * 3600);
        assert_eq!(s.body, b"{}");
        assert_eq!(s.missed, Missed::Skip);
    }

    #[test]
    fn mistakes_name_the_key() {
        assert_eq!(one("name = \"n\"\ncron = \"* * *\"").unwrap_err().1, "cron");
        assert_eq!(
            one("name = \"n\"\ncron = \"61 * * * *\"").unwrap_err().1,
            "cron"
        );
        assert_eq!(
            one("name = \"n\"\ncron = \"* * * * *\"\ntimezone = \"Mars/Olympus\"")
                .unwrap_err()
                .1,
            "timezone"
        );
        assert_eq!(
            one("name = \"a b\"\ncron = \"* * * * *\"").unwrap_err().1,
            "name"
        );
        let body =
            one("name = \"n\"\ncron = \"* * * * *\"\nbody = { text = \"hi\", n = 2 }").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body.body).unwrap();
        assert_eq!(v["text"], "hi");
    }
}
