//! The environment a worker gets: the daemon's own, plus the service's `env`, plus
//! what paddock sets. Whatever path started the daemon (`start`, `run`, systemd, a
//! container), the worker's environment comes from the config (seed 001).

use std::collections::BTreeMap;

use crate::config::Service;

/// Thread-pool variables that default to max(1, cores / all workers).
pub const THREAD_VARS: [&str; 5] = [
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
];

/// The variables paddock sets for worker `index` of `service` (the service's own
/// `env` included), given the daemon's environment `inherited`.
pub fn worker_env(
    service: &Service,
    index: u32,
    total_workers: u32,
    cores: usize,
    port: Option<u16>,
    inherited: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut set = BTreeMap::new();
    let threads = (cores / total_workers.max(1) as usize).max(1).to_string();
    for var in THREAD_VARS {
        if !service.env.contains_key(var) && !inherited.contains_key(var) {
            set.insert(var.to_string(), threads.clone());
        }
    }
    for (k, v) in &service.env {
        set.insert(k.clone(), expand(v, index, port));
    }
    set.insert("PADDOCK_SERVICE".into(), service.name.to_string());
    set.insert("PADDOCK_WORKER".into(), index.to_string());
    if let Some(p) = port {
        set.insert("PORT".into(), p.to_string());
    }
    set
}

/// `set` with the variables that pin a worker to `device` (a GPU paddock
/// assigned): they override the service's `env`, since the assignment is the
/// config's own word on where the worker runs.
pub fn on_device(
    mut set: BTreeMap<String, String>,
    device: Option<u32>,
    amd: bool,
) -> BTreeMap<String, String> {
    if let Some(d) = device {
        set.extend(crate::gpu::visible_env(d, amd));
    }
    set
}

/// The part of `set` that paddock computed itself (safe to show anyone): everything
/// but what the service's `env` set, whose values may be secrets.
pub fn computed(service: &Service, set: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    // A device assignment overrides the service's own value: it is paddock's.
    let placed = service.gpu.devices != crate::config::gpu::Devices::None;
    let gpu_var = |k: &str| {
        k == crate::gpu::VISIBLE || k == crate::gpu::ORDER.0 || crate::gpu::VISIBLE_AMD.contains(&k)
    };
    set.iter()
        .filter(|(k, _)| !service.env.contains_key(*k) || (placed && gpu_var(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Replaces `{worker}` (the worker's index) and `{port}` (its port, when it has
/// one) in a value of `command`, `env` or `cwd`: one path per worker is one line of
/// config (a database file each, say).
pub fn expand(value: &str, worker: u32, port: Option<u16>) -> String {
    let v = value.replace("{worker}", &worker.to_string());
    match port {
        Some(p) => v.replace("{port}", &p.to_string()),
        None => v,
    }
}

/// [`expand`] on each argument.
pub fn expand_argv(argv: &[String], worker: u32, port: Option<u16>) -> Vec<String> {
    argv.iter().map(|a| expand(a, worker, port)).collect()
}

/// [`expand`] on a working directory.
pub fn expand_path(path: &std::path::Path, worker: u32, port: Option<u16>) -> std::path::PathBuf {
    match path.to_str() {
        Some(s) => expand(s, worker, port).into(),
        None => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(env: &[(&str, &str)]) -> Service {
        let text = "[services.s]\nkind = \"process\"\ncommand = [\"x\", \"--port={port}\"]\nport = \"auto\"\n";
        let mut s = crate::config::parse(std::path::Path::new("/t/p.toml"), text, None)
            .unwrap()
            .services
            .remove(0);
        s.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s
    }

    #[test]
    fn thread_vars_default_to_share_of_cores() {
        let e = worker_env(&service(&[]), 1, 4, 16, Some(9000), &BTreeMap::new());
        assert_eq!(e["OMP_NUM_THREADS"], "4");
        assert_eq!(e["PADDOCK_WORKER"], "1");
        assert_eq!(e["PADDOCK_SERVICE"], "s");
        assert_eq!(e["PORT"], "9000");
        let e = worker_env(&service(&[]), 0, 8, 2, None, &BTreeMap::new());
        assert_eq!(e["MKL_NUM_THREADS"], "1");
    }

    #[test]
    fn user_values_win() {
        let inherited: BTreeMap<_, _> = [("MKL_NUM_THREADS".to_string(), "7".to_string())].into();
        let e = worker_env(
            &service(&[("OMP_NUM_THREADS", "3")]),
            0,
            1,
            8,
            None,
            &inherited,
        );
        assert_eq!(e["OMP_NUM_THREADS"], "3");
        assert!(
            !e.contains_key("MKL_NUM_THREADS"),
            "inherited values are not overridden"
        );
    }

    #[test]
    fn values_from_the_config_are_never_in_the_computed_part() {
        let s = service(&[("HF_TOKEN", "hf_secret"), ("OMP_NUM_THREADS", "3")]);
        let set = worker_env(&s, 0, 1, 8, Some(81), &BTreeMap::new());
        let shown = computed(&s, &set);
        assert!(!shown.contains_key("HF_TOKEN"));
        assert!(!shown.contains_key("OMP_NUM_THREADS"));
        assert_eq!(shown["MKL_NUM_THREADS"], "8");
        assert_eq!(shown["PORT"], "81");
        assert!(!format!("{shown:?}").contains("hf_secret"));
    }

    #[test]
    fn a_device_is_pinned_over_the_services_own_env() {
        let s = service(&[
            ("CUDA_VISIBLE_DEVICES", "0,1"),
            ("CUDA_DEVICE_ORDER", "FASTEST_FIRST"),
        ]);
        let e = on_device(
            worker_env(&s, 0, 1, 8, None, &BTreeMap::new()),
            Some(1),
            false,
        );
        assert_eq!(e["CUDA_VISIBLE_DEVICES"], "1");
        assert_eq!(e["CUDA_DEVICE_ORDER"], "PCI_BUS_ID", "NVML's numbering");
        assert!(!e.contains_key("HIP_VISIBLE_DEVICES"));
        let e = on_device(worker_env(&s, 0, 1, 8, None, &BTreeMap::new()), None, true);
        assert_eq!(
            e["CUDA_VISIBLE_DEVICES"], "0,1",
            "no assignment: the env as written"
        );
    }

    #[test]
    fn port_placeholder() {
        let s = service(&[]);
        assert_eq!(expand_argv(&s.command, 0, Some(81)), vec!["x", "--port=81"]);
        let argv = vec!["--db=/data/w{worker}.db".to_string()];
        assert_eq!(expand_argv(&argv, 3, None), vec!["--db=/data/w3.db"]);
        let s = service(&[("CHROMA_PATH", "/data/chroma-{worker}")]);
        let e = worker_env(&s, 2, 4, 8, None, &BTreeMap::new());
        assert_eq!(e["CHROMA_PATH"], "/data/chroma-2");
        assert_eq!(
            expand_path(std::path::Path::new("/srv/w{worker}"), 1, None),
            std::path::PathBuf::from("/srv/w1")
        );
    }
}
