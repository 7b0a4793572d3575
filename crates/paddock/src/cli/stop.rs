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
    match client::request(&paths, &Request::Stop) {
        Ok(Reply::Stopping) => {}
        Ok(other) => {
            output::error(&format!("unexpected answer to stop: {other:?}"));
            return exit::FAILURE;
        }
        Err(e) => {
            if !client::running(&paths) {
                output::error(&client::not_running_message(config));
                return exit::NOT_RUNNING;
            }
            output::error(&e);
            return exit::FAILURE;
        }
    }
    let grace = config
        .services
        .iter()
        .map(|s| s.stop_timeout)
        .max()
        .unwrap_or_default();
    let limit = grace + Duration::from_secs(15);
    if !json {
        eprintln!(
            "paddock: stopping instance {}{} …",
            config.instance.name,
            info.as_ref()
                .map(|i| format!(" (pid {})", i.pid))
                .unwrap_or_default()
        );
    }
    let t = Instant::now();
    match paddock_sys::lock::wait_released(&paths.lock, limit) {
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
            output::error(&format!(
                "instance {} did not stop within {}s; see {}",
                config.instance.name,
                limit.as_secs(),
                paths.daemon_log.display()
            ));
            exit::TIMED_OUT
        }
        Err(e) => {
            output::error(&e.to_string());
            exit::FAILURE
        }
    }
}
