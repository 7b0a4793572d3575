//! `paddock jobs list|show|cancel|retry|stats`: durable jobs, through the control
//! socket.

use clap::Subcommand;
use comfy_table::{Table, presets};
use serde_json::Value;

use super::{client, output};
use crate::config::Config;
use crate::control::{JobsRequest, Reply, Request};
use crate::exit;
use crate::instance::Paths;

#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// List jobs, oldest first, a page at a time.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Start after this sequence number (the previous page's `next`).
        #[arg(long)]
        after: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// One job: state, attempts, timestamps, each attempt's cause.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued, scheduled, claimed or running job (a running one: its worker
    /// stops the stream, or is killed and replaced).
    Cancel {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Queue a dead or cancelled job again.
    Retry {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Jobs by service and state, the store's size, the oldest finished job and
    /// the last prune (job_retention).
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Compact the SQLite job store once (a full VACUUM, turning on incremental
    /// vacuum): for a database made by a paddock before retention. The daemon
    /// must be stopped.
    Compact {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config: &Config, cmd: JobsCmd) -> i32 {
    let paths = Paths::of(config);
    if let JobsCmd::Compact { json } = cmd {
        return compact(config, &paths, json);
    }
    if !client::running(&paths) {
        output::error(&client::not_running_message(config));
        return exit::NOT_RUNNING;
    }
    let (req, json, kind) = match cmd {
        JobsCmd::List {
            state,
            service,
            limit,
            after,
            json,
        } => (
            JobsRequest::List {
                state,
                service,
                limit: Some(limit),
                after,
            },
            json,
            "list",
        ),
        JobsCmd::Show { id, json } => (JobsRequest::Show { id }, json, "one"),
        JobsCmd::Cancel { id, json } => (JobsRequest::Cancel { id }, json, "one"),
        JobsCmd::Retry { id, json } => (JobsRequest::Retry { id }, json, "one"),
        JobsCmd::Stats { json } => (JobsRequest::Stats, json, "stats"),
        JobsCmd::Compact { .. } => unreachable!("handled above"),
    };
    let req = Request::Jobs(req);
    let value = match client::ask(config, &req, "jobs", client::ANSWER_TIMEOUT, |r| match r {
        Reply::Jobs { value } => Ok(value),
        other => Err(other),
    }) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else if kind == "list" {
        print_list(&value);
    } else if kind == "stats" {
        print_stats(&value);
    } else {
        print_one(&value);
    }
    exit::OK
}

/// `paddock jobs compact`: with the daemon stopped, a full VACUUM of the SQLite
/// store that also turns incremental vacuum on.
fn compact(config: &Config, paths: &Paths, json: bool) -> i32 {
    let crate::config::Store::Sqlite(path) = &config.instance.store else {
        output::error(
            "the job store is PostgreSQL: its autovacuum reuses the space of pruned jobs; \
             run VACUUM FULL paddock_jobs yourself to give it back to the disk",
        );
        return exit::USAGE;
    };
    if client::running(paths) {
        output::error(&format!(
            "instance {} (port {}) is running: stop it first (paddock stop), then compact",
            config.instance.name,
            config.instance.listen.port()
        ));
        return exit::ALREADY_RUNNING;
    }
    let path = path.clone().unwrap_or_else(|| paths.dir.join("jobs.db"));
    if !path.exists() {
        output::error(&format!("no job store at {}", path.display()));
        return exit::FAILURE;
    }
    match crate::daemon::jobs::compact_offline(&path) {
        Ok((before, after)) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"path": path, "bytes_before": before, "bytes_after": after})
                );
            } else {
                println!(
                    "compacted {}: {} -> {}; pruned jobs' space is now given back as they go",
                    path.display(),
                    size(before),
                    size(after)
                );
            }
            exit::OK
        }
        Err(e) => {
            output::error(&e.to_string());
            exit::FAILURE
        }
    }
}

/// "36 KB", "60.5 MB".
fn size(bytes: u64) -> String {
    match bytes {
        0..1_000_000 => format!("{} KB", bytes.div_ceil(1000)),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A table in the terminal's style: boxed on a terminal, plain columns in a pipe.
fn table() -> Table {
    let mut t = Table::new();
    t.load_style(if output::stdout_is_tty() {
        presets::UTF8_FULL_CONDENSED
    } else {
        presets::NOTHING
    });
    t
}

fn print_list(v: &Value) {
    let mut t = table();
    t.set_header(vec![
        "ID", "SERVICE", "METHOD", "STATE", "ATTEMPTS", "CREATED", "FINISHED",
    ]);
    for j in v["jobs"].as_array().into_iter().flatten() {
        t.add_row(vec![
            s(&j["id"]),
            s(&j["service"]),
            s(&j["method"]),
            // A scheduled job shows its time; a queued one waiting out a retry's
            // backoff shows when it may run again.
            match j["state"].as_str() {
                Some("scheduled") => format!("scheduled for {}", s(&j["run_after"])),
                _ if j["priority"].as_i64().is_some_and(|p| p != 0) => {
                    format!("{} (priority {})", s(&j["state"]), j["priority"])
                }
                _ => s(&j["state"]),
            },
            format!("{} ({} failed)", j["attempts"], j["failures"]),
            s(&j["created_at"]),
            s(&j["finished_at"]),
        ]);
    }
    println!("{t}");
    if !v["next"].is_null() {
        println!("more: paddock jobs list --after {}", v["next"]);
    }
}

fn print_stats(v: &Value) {
    let mb = |x: &Value| x.as_u64().unwrap_or(0) as f64 / 1e6;
    println!(
        "job store: {} {} ({:.1} MB on disk; jobs take {} of at most {:.1} MB, job_store_max_size)",
        s(&v["store"]),
        s(&v["location"]),
        mb(&v["bytes"]),
        if v["used_bytes"].is_null() {
            "? MB".to_string()
        } else {
            format!("{:.1} MB", mb(&v["used_bytes"]))
        },
        mb(&v["max_bytes"]),
    );
    let mut t = table();
    t.set_header(vec![
        "SERVICE",
        "QUEUED",
        "SCHEDULED",
        "CLAIMED",
        "RUNNING",
        "DONE",
        "DEAD",
        "CANCELLED",
        "OLDEST FINISHED",
        "RETENTION",
        "LAST PRUNE",
    ]);
    for svc in v["services"].as_array().into_iter().flatten() {
        let c = &svc["counts"];
        let prune = &svc["last_prune"];
        let last = if prune.is_null() {
            "-".to_string()
        } else {
            format!(
                "{} ({} removed, {} ms)",
                s(&prune["at"]),
                prune["removed"],
                prune["took_ms"]
            )
        };
        t.add_row(vec![
            s(&svc["service"]),
            s(&c["queued"]),
            s(&c["scheduled"]),
            s(&c["claimed"]),
            s(&c["running"]),
            s(&c["done"]),
            s(&c["dead"]),
            s(&c["cancelled"]),
            s(&svc["oldest_finished"]),
            s(&svc["retention"]),
            last,
        ]);
    }
    println!("{t}");
}

fn print_one(j: &Value) {
    println!(
        "job {} — {} ({}/{})",
        s(&j["id"]),
        s(&j["state"]),
        s(&j["service"]),
        s(&j["method"])
    );
    if j["state"] == "scheduled" {
        println!("  scheduled for {}", s(&j["run_after"]));
    }
    if j["priority"].as_i64().is_some_and(|p| p != 0) {
        println!("  priority {}", j["priority"]);
    }
    println!(
        "  attempts {} ({} failed, max {}), created {}, started {}, finished {}",
        j["attempts"],
        j["failures"],
        j["max_attempts"],
        s(&j["created_at"]),
        s(&j["started_at"]),
        s(&j["finished_at"])
    );
    for h in j["history"].as_array().into_iter().flatten() {
        let cause = &h["cause"];
        let why = if cause.is_null() {
            String::new()
        } else {
            let kind = s(&cause["kind"]);
            let detail = cause["detail"]["description"]
                .as_str()
                .or(cause["message"].as_str())
                .unwrap_or("");
            format!(": {kind} {detail}")
        };
        println!(
            "  attempt {} at {}: {}{why}",
            h["attempt"],
            s(&h["at"]),
            s(&h["outcome"])
        );
    }
}
