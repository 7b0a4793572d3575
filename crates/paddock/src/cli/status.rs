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
    if let Some(why) = &i.job_store_outage {
        out.push_str(&format!("job store: {why}\n"));
    }
    if let Some(m) = &i.memory {
        out.push_str(&format!(
            "memory budget {}: {} in use by workers, {} reserved for workers starting\n",
            mib(m.budget_bytes),
            mib(m.used_bytes),
            mib(m.reserved_bytes)
        ));
    }
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
        if svc.workers.is_empty() && svc.state == crate::status::ServiceState::Unloaded {
            let mut row = vec![name.clone(), svc.state.to_string()];
            row.extend(std::iter::repeat_n("-".to_string(), 5));
            if gpu {
                row.extend(["-".to_string(), "-".to_string()]);
            }
            t.add_row(row);
        }
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
        if let Some(line) = svc
            .scaling
            .as_ref()
            .and_then(|x| scaling_line(x, i.memory.is_some()))
        {
            out.push_str(&format!("{}: {line}\n", svc.name));
        }
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

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// An elastic service's range and what loading it has done (None for a fixed
/// service that was never evicted, where there is nothing to say).
fn scaling_line(x: &crate::status::ScalingStatus, budget: bool) -> Option<String> {
    if x.min_workers == x.max_workers && !budget {
        return None;
    }
    let mut parts = vec![format!(
        "{} worker{} (min {}, max {}{})",
        x.workers,
        if x.workers == 1 { "" } else { "s" },
        x.min_workers,
        x.max_workers,
        x.idle_timeout_secs
            .map(|t| format!(
                ", idle_timeout {}",
                crate::timefmt::human(std::time::Duration::from_secs_f64(t))
            ))
            .unwrap_or_default()
    )];
    parts.push(format!(
        "last used {}",
        x.last_used.as_deref().unwrap_or("never")
    ));
    if x.cold_starts > 0 {
        parts.push(format!(
            "{} cold start{}{}",
            x.cold_starts,
            if x.cold_starts == 1 { "" } else { "s" },
            x.last_cold_start_ms
                .map(|ms| format!(" (last {ms} ms to READY)"))
                .unwrap_or_default()
        ));
    }
    if x.scale_ups + x.scale_downs > 0 {
        parts.push(format!("scaled up {}, down {}", x.scale_ups, x.scale_downs));
    }
    if let Some(peak) = x.memory_peak_bytes {
        parts.push(format!("a worker held up to {}", mib(peak)));
    }
    if x.evictions > 0 {
        parts.push(format!(
            "{} eviction{} (last {})",
            x.evictions,
            if x.evictions == 1 { "" } else { "s" },
            x.last_eviction.as_deref().unwrap_or("-")
        ));
    }
    Some(parts.join("; "))
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
