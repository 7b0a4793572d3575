//! `paddock reload`: replace every worker one at a time, with no failed request.

use super::{client, output};
use crate::config::Config;
use crate::control::{Reply, Request};
use crate::exit;
use crate::instance::Paths;

pub fn run(config: &Config, json: bool) -> i32 {
    let paths = Paths::of(config);
    if !client::running(&paths) {
        output::error(&client::not_running_message(config));
        return exit::NOT_RUNNING;
    }
    if !json {
        eprintln!(
            "paddock: replacing the workers of {} one at a time …",
            config.instance.name
        );
    }
    let asked = client::ask(
        config,
        &Request::Reload,
        "reload",
        reload_limit(config),
        |r| match r {
            Reply::Reloaded { replaced } => Ok(replaced),
            Reply::Error { error } => Err(Reply::Error {
                error: format!("reload failed: {error}"),
            }),
            other => Err(other),
        },
    );
    match asked {
        Ok(replaced) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"reloaded": true, "replaced": replaced})
                );
            } else {
                for line in &replaced {
                    println!("{line}");
                }
                println!(
                    "reloaded instance {}: {} worker(s) replaced",
                    config.instance.name,
                    replaced.len()
                );
            }
            exit::OK
        }
        Err(code) => code,
    }
}

/// Each worker may take its startup timeout plus its stop timeout to be replaced.
fn reload_limit(config: &Config) -> std::time::Duration {
    config
        .services
        .iter()
        .map(|s| {
            (s.startup_timeout + s.restart.stop_timeout + std::time::Duration::from_secs(5))
                * s.workers
        })
        .sum::<std::time::Duration>()
        + std::time::Duration::from_secs(10)
}
