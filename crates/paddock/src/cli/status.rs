//! `paddock status [--json]`: the instance and each service and worker.

use comfy_table::{Table, presets};

use super::{client, output};
use crate::config::Config;
use crate::control::{Reply, Request};
use crate::exit;
use crate::instance::Paths;
use crate::status::Status;

pub fn run(config: &Config, json: bool) -> i32 {
    let paths = Paths::of(config);
    if !client::running(&paths) {
        if json {
            println!(
                "{}",
                serde_json::json!({"running": false, "instance": config.instance.name.to_string(), "port": config.instance.listen.port()})
            );
        }
        output::error(&client::not_running_message(config));
        return exit::NOT_RUNNING;
    }
    let asked = client::ask(
        config,
        &Request::Status,
        "status",
        client::ANSWER_TIMEOUT,
        |r| match r {
            Reply::Status { status } => Ok(status),
            other => Err(other),
        },
    );
    let status = match asked {
        Ok(s) => s,
        Err(code) => return code,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    } else {
        print!("{}", render(&status, output::stdout_is_tty()));
    }
    exit::OK
}

/// The human view: a header line and one table row per worker.
pub fn render(s: &Status, tty: bool) -> String {
    let i = &s.instance;
    let mut out = format!(
        "instance {} — pid {}, listening on {}, up {}, paddock {}{}\n",
        i.name,
        i.pid,
        i.listen,
        crate::timefmt::human(std::time::Duration::from_secs(i.uptime_secs)),
        i.version,
        if i.ready { "" } else { " — NOT READY" }
    );
    // GPU columns only where a worker has a device: most instances have none.
    let gpu = s
        .services
        .iter()
        .flat_map(|svc| &svc.workers)
        .any(|w| w.device.is_some());
    let mut t = Table::new();
    t.load_style(if tty {
        presets::UTF8_FULL_CONDENSED
    } else {
        presets::NOTHING
    });
    let mut header = vec![
        "SERVICE",
        "STATE",
        "WORKER",
        "PID",
        "RESTARTS",
        "READY SINCE",
        "LAST EXIT",
    ];
    if gpu {
        header.extend(["GPU", "GPU MEMORY"]);
    }
    t.set_header(header);
    for svc in &s.services {
        let name = match svc.port {
            Some(p) => format!("{} ({}, port {p})", svc.name, svc.kind),
            None => format!("{} ({})", svc.name, svc.kind),
        };
        for w in &svc.workers {
            let mut row = vec![
                name.clone(),
                w.state.to_string(),
                w.index.to_string(),
                w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                w.restarts.to_string(),
                w.ready_since.clone().unwrap_or_else(|| "-".into()),
                w.last_exit
                    .as_ref()
                    .map(|c| c.description.clone())
                    .unwrap_or_else(|| "-".into()),
            ];
            if gpu {
                row.push(w.device.map_or("-".into(), |d| d.to_string()));
                row.push(match (w.gpu_memory_bytes, &i.gpus.unavailable) {
                    (Some(b), _) => format!("{} MiB", b >> 20),
                    (None, Some(_)) => "no driver".into(),
                    (None, None) => "-".into(),
                });
            }
            t.add_row(row);
        }
    }
    out.push_str(&t.to_string());
    out.push('\n');
    if gpu {
        match &i.gpus.unavailable {
            Some(why) => out.push_str(&format!("GPUs: {why}\n")),
            None => {
                let devices: Vec<String> = i.gpus.devices.iter().map(|d| d.summary()).collect();
                out.push_str(&format!("GPUs: {}\n", devices.join("; ")));
            }
        }
    }
    for svc in &s.services {
        out.push_str(&sdk_lines(&svc.name, &svc.workers));
        for sc in &svc.schedules {
            out.push_str(&format!(
                "{}: schedule {} ({}, handler {}): next run {}\n",
                svc.name,
                sc.name,
                sc.cron,
                sc.handler,
                sc.next_run.as_deref().unwrap_or("never")
            ));
        }
    }
    for svc in &s.services {
        if let Some(r) = &svc.reason {
            out.push_str(&format!("{}: {}: {r}\n", svc.name, svc.state));
        }
    }
    out
}

/// One line per distinct SDK a service's workers said they run (HELLO): its version,
/// protocol, interpreter and where it was imported from, and how it fits this paddock.
fn sdk_lines(service: &str, workers: &[crate::status::WorkerStatus]) -> String {
    let mut seen: Vec<&crate::status::WorkerSdk> = Vec::new();
    for sdk in workers.iter().filter_map(|w| w.sdk.as_ref()) {
        if !seen.contains(&sdk) {
            seen.push(sdk);
        }
    }
    let mut out = String::new();
    for sdk in seen {
        let version = sdk.version.as_deref().unwrap_or("of an unknown version");
        let python = sdk
            .python
            .as_deref()
            .map(|p| format!(", Python {p}"))
            .unwrap_or_default();
        let from = sdk
            .path
            .as_deref()
            .map(|p| format!(" from {p}"))
            .unwrap_or_default();
        let fit = match crate::sdk::fit(sdk.protocol, sdk.version.as_deref()) {
            crate::sdk::Fit::Same => String::new(),
            crate::sdk::Fit::Older => format!(
                " (older than this paddock, {}: see paddock doctor)",
                crate::VERSION
            ),
            crate::sdk::Fit::Newer => format!(" (newer than this paddock, {})", crate::VERSION),
            crate::sdk::Fit::Incompatible => " (a protocol this paddock does not speak)".into(),
        };
        out.push_str(&format!(
            "{service}: SDK {version} (protocol {}{python}){from}{fit}\n",
            sdk.protocol
        ));
    }
    out
}
