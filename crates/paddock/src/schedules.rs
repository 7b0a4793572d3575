//! The periodic jobs of a service as `status` and `check` show them: each schedule
//! with its next run. Kept apart from `status` (plain data) and `config` (which
//! parses the schedules), the two layers it joins.

use crate::config::schedule::Schedule;
use crate::status::ScheduleStatus;

/// `schedules`, each with its next tick after now.
pub fn shown(schedules: &[Schedule]) -> Vec<ScheduleStatus> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    schedules
        .iter()
        .map(|s| ScheduleStatus {
            name: s.name.clone(),
            cron: s.cron.clone(),
            handler: s.handler.clone(),
            next_run: s.next_after(now).map(|ms| {
                crate::timefmt::rfc3339(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
                )
            }),
        })
        .collect()
}
