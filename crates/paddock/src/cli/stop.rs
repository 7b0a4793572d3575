//! `paddock stop`: ask the daemon to stop, then wait until its lock is released.

use std::time::{Duration, Instant};

use super::{client, output};
use crate::config::Config;
use crate::control::{Reply, Request};
use crate::exit;
use crate::instance::{LockInfo, Paths};

pub fn run(config: &Config, json: bool) -> i32 {
    let paths = Paths::of(config);
    if !client::running(&paths) {
        output::error(&client::not_running_message(config));
        return exit::NOT_RUNNING;
    }
    let info = LockInfo::read_settled(&paths.lock);
    let asked = client::ask(
        config,
        &Request::Stop,
        "stop",
        client::ANSWER_TIMEOUT,
        |r| match r {
            Reply::Stopping => Ok(()),
            other => Err(other),
        },
    );
    if let Err(code) = asked {
        return code;
    }
    let limit = stop_limit(config);
    if !json {
        eprintln!(
            "paddock: stopping instance {}{} (at most {}s) …",
            config.instance.name,
            info.as_ref()
                .map(|i| format!(" (pid {})", i.pid))
                .unwrap_or_default(),
            limit.as_secs()
        );
    }
    let t = Instant::now();
    let deadline = t + limit;
    let mut last_shown = String::new();
    let released = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match paddock_sys::lock::wait_released(&paths.lock, left.min(Duration::from_secs(1))) {
            Ok(true) => break Ok(true),
            Ok(false) if left.is_zero() => break Ok(false),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
        // Still draining: say what it waits on (once per change).
        if !json
            && let Some(line) = waiting_on(&paths)
            && line != last_shown
        {
            eprintln!("paddock: waiting for {line}");
            last_shown = line;
        }
    };
    match released {
        Ok(true) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"stopped": true, "seconds": t.elapsed().as_secs_f64()})
                );
            } else {
                println!(
                    "stopped instance {} in {:.1}s",
                    config.instance.name,
                    t.elapsed().as_secs_f64()
                );
            }
            exit::OK
        }
        Ok(false) => {
            let what = waiting_on(&paths)
                .map(|w| format!(" (still waiting for {w})"))
                .unwrap_or_default();
            output::error(&format!(
                "instance {} did not stop within {}s{what}; see {}",
                config.instance.name,
                limit.as_secs(),
                paths.daemon_log.display()
            ));
            exit::STOP_TIMED_OUT
        }
        Err(e) => {
            output::error(&e.to_string());
            exit::FAILURE
        }
    }
}

/// How long a stop may take, from the config: each service drains the requests it
/// is serving (up to `request_timeout`, plus a second), then SIGTERM and SIGKILL
/// after `stop_timeout`; services stop side by side. Plus a margin for the job
/// store's last commit and the process's exit.
pub fn stop_limit(config: &Config) -> Duration {
    config
        .services
        .iter()
        .map(|s| s.request_timeout + Duration::from_secs(1) + s.restart.stop_timeout)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(15)
}

/// The workers a stopping daemon still waits for, e.g. "embed/0 (busy)".
fn waiting_on(paths: &Paths) -> Option<String> {
    let Ok(Reply::Status { status }) =
        client::request_with_timeout(paths, &Request::Status, Duration::from_millis(500))
    else {
        return None;
    };
    let busy: Vec<String> = status
        .services
        .iter()
        .flat_map(|s| {
            s.workers
                .iter()
                .filter(|w| w.state != crate::status::Phase::Stopped)
                .map(move |w| format!("{}/{} ({})", s.name, w.index, w.state))
        })
        .collect();
    (!busy.is_empty()).then(|| busy.join(", "))
}
