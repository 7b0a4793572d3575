//! `paddock check`: the config is valid (loading it already proved that); say what
//! it describes.

use crate::config::gpu::Devices;
use crate::config::{Config, PortSpec, Service};
use crate::exit;
use crate::instance::Paths;

pub fn run(config: &Config, json: bool) -> i32 {
    let paths = Paths::of(config);
    // `start` would fail here: say so now, naming the key (a default at fault too).
    if let Err(why) = paths.probe() {
        let e = crate::config::error_at(
            &config.path,
            "instance",
            "state_dir",
            format!("the state folder cannot be used: {why}"),
        );
        super::output::error(&e.to_string());
        return exit::USAGE;
    }
    if json {
        let services: Vec<_> = config
            .services
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name.to_string(),
                    "kind": s.kind,
                    "workers": s.workers,
                    "command": s.command,
                    "port": s.port.map(|p| match p { PortSpec::Auto => "auto".to_string(), PortSpec::Fixed(n) => n.to_string() }),
                    "gpu": gpu_json(s),
                    "scaling": scaling_json(s),
                    "schedules": crate::schedules::shown(&s.schedules),
                })
            })
            .collect();
        let v = serde_json::json!({
            "ok": true,
            "config": config.path.display().to_string(),
            "instance": config.instance.name.to_string(),
            "listen": config.instance.listen.to_string(),
            "state_dir": paths.dir.display().to_string(),
            "services": services,
            "memory_budget_bytes": (config.instance.memory_budget > 0).then_some(config.instance.memory_budget),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return exit::OK;
    }
    println!(
        "{}: ok — instance {} on {}, {} service{}",
        config.path.display(),
        config.instance.name,
        config.instance.listen,
        config.services.len(),
        if config.services.len() == 1 { "" } else { "s" }
    );
    for s in &config.services {
        let port = match s.port {
            Some(PortSpec::Auto) => ", port auto".to_string(),
            Some(PortSpec::Fixed(p)) => format!(", port {p}"),
            None => String::new(),
        };
        let workers = if s.elastic() {
            format!("{} to {} workers", s.scaling.min_workers, s.workers)
        } else {
            format!(
                "{} worker{}",
                s.workers,
                if s.workers == 1 { "" } else { "s" }
            )
        };
        println!(
            "  {} ({}, {workers}{port}): {}",
            s.name,
            s.kind,
            s.command.join(" ")
        );
        if let Some(line) = scaling_line(s) {
            println!("    {line}");
        }
        if let Some(line) = gpu_line(s) {
            println!("    {line}");
        }
        for sc in crate::schedules::shown(&s.schedules) {
            println!(
                "    schedule {} ({}, handler {}): next run {}",
                sc.name,
                sc.cron,
                sc.handler,
                sc.next_run.as_deref().unwrap_or("never")
            );
        }
    }
    if config.instance.memory_budget > 0 {
        println!(
            "  memory_budget: {} MiB for every worker's resident memory together",
            config.instance.memory_budget >> 20
        );
    }
    println!("  state: {}", paths.dir.display());
    exit::OK
}

/// An elastic service's scaling settings, in the config's own words.
fn scaling_line(s: &Service) -> Option<String> {
    use crate::timefmt::config_duration;
    let c = &s.scaling;
    let mut parts = vec![];
    if s.elastic() {
        if c.min_workers == 0 {
            parts.push("loaded on the first request (proven once at start)".to_string());
        }
        if let Some(t) = c.idle_timeout {
            parts.push(format!("idle_timeout {}", config_duration(t)));
        }
        parts.push(format!(
            "one more worker while over {} queued per worker for {}",
            c.target_queue,
            config_duration(c.scale_up_after)
        ));
    }
    if c.memory_estimate > 0 {
        parts.push(format!("memory_estimate {} MiB", c.memory_estimate >> 20));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn scaling_json(s: &Service) -> serde_json::Value {
    let c = &s.scaling;
    serde_json::json!({
        "min_workers": c.min_workers,
        "max_workers": s.workers,
        "idle_timeout_secs": c.idle_timeout.map(|t| t.as_secs_f64()),
        "target_queue": c.target_queue,
        "scale_up_after_secs": c.scale_up_after.as_secs_f64(),
        "memory_estimate_bytes": (c.memory_estimate > 0).then_some(c.memory_estimate),
    })
}

/// Where a service's workers go, by worker index: a list's placement is known
/// now; `"auto"`'s only once the daemon asks the driver.
fn placement(s: &Service) -> Option<Vec<u32>> {
    match &s.gpu.devices {
        Devices::List(_) => Some(s.gpu.assign(&[], s.workers).into_iter().flatten().collect()),
        Devices::Auto | Devices::None => None,
    }
}

fn gpu_json(s: &Service) -> serde_json::Value {
    let devices = match &s.gpu.devices {
        Devices::None => return serde_json::Value::Null,
        Devices::Auto => serde_json::json!("auto"),
        Devices::List(l) => serde_json::json!(l),
    };
    serde_json::json!({
        "devices": devices,
        "workers_per_device": s.gpu.per_device,
        "placement": placement(s),
        "max_gpu_memory_bytes": (s.gpu.max_memory > 0).then_some(s.gpu.max_memory),
    })
}

/// "GPUs: worker 0 on 3, 1 on 3, …; max_gpu_memory 30 GiB", or None without GPUs.
fn gpu_line(s: &Service) -> Option<String> {
    let limit = match s.gpu.max_memory {
        0 => String::new(),
        b => format!("; max_gpu_memory {} MiB", b >> 20),
    };
    match &s.gpu.devices {
        Devices::None => None,
        Devices::Auto => Some(format!(
            "GPUs: every GPU the driver reports at start, {} worker(s) each{limit}",
            s.gpu.per_device
        )),
        Devices::List(_) => {
            let by_worker: Vec<String> = placement(s)
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, d)| format!("{i} on {d}"))
                .collect();
            Some(format!("GPUs: worker {}{limit}", by_worker.join(", ")))
        }
    }
}
