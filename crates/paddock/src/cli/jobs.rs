//! `paddock jobs list|show|cancel|retry`: durable jobs, through the control socket.

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
    /// Cancel a queued job.
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
}

pub fn run(config: &Config, cmd: JobsCmd) -> i32 {
    let paths = Paths::of(config);
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
    };
    let req = Request::Jobs(req);
    let value = match client::request(&paths, &req) {
        Ok(Reply::Jobs { value }) => value,
        Ok(Reply::Error { error }) => {
            output::error(&error);
            return exit::FAILURE;
        }
        Ok(other) => {
            output::error(&format!("unexpected answer: {other:?}"));
            return exit::FAILURE;
        }
        Err(e) => {
            output::error(&e);
            return exit::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else if kind == "list" {
        print_list(&value);
    } else {
        print_one(&value);
    }
    exit::OK
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_list(v: &Value) {
    let mut t = Table::new();
    t.load_style(if output::stdout_is_tty() {
        presets::UTF8_FULL_CONDENSED
    } else {
        presets::NOTHING
    });
    t.set_header(vec![
        "ID", "SERVICE", "METHOD", "STATE", "ATTEMPTS", "CREATED", "FINISHED",
    ]);
    for j in v["jobs"].as_array().into_iter().flatten() {
        t.add_row(vec![
            s(&j["id"]),
            s(&j["service"]),
            s(&j["method"]),
            s(&j["state"]),
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

fn print_one(j: &Value) {
    println!(
        "job {} — {} ({}/{})",
        s(&j["id"]),
        s(&j["state"]),
        s(&j["service"]),
        s(&j["method"])
    );
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
