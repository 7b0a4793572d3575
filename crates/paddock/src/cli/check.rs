//! `paddock check`: the config is valid (loading it already proved that); say what
//! it describes.

use crate::config::{Config, PortSpec};
use crate::exit;
use crate::instance::Paths;

pub fn run(config: &Config, json: bool) -> i32 {
    let paths = Paths::of(config);
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
        println!(
            "  {} ({}, {} worker{}{port}): {}",
            s.name,
            s.kind,
            s.workers,
            if s.workers == 1 { "" } else { "s" },
            s.command.join(" ")
        );
    }
    println!("  state: {}", paths.dir.display());
    exit::OK
}
