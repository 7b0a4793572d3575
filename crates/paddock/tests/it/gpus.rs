//! GPUs without a GPU (CI has none): placement by `devices` and
//! `workers_per_device` — each worker's CUDA_VISIBLE_DEVICES in its own process,
//! kept across a crash and a reload — and the no-driver path end to end: status,
//! metrics, the dashboard's data and doctor say "no NVIDIA driver". The NVML
//! measurements and `max_gpu_memory` run against a stand-in driver library in
//! nvml.rs, and on a GPU machine in bench/gpu/.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Env, json_report, kill, wait_until};

fn visible(pid: i64) -> Option<String> {
    paddock_sys::procs::environ(pid as i32)
        .get("CUDA_VISIBLE_DEVICES")
        .cloned()
}

fn worker(st: &Value, i: usize) -> Value {
    st["services"][0]["workers"][i].clone()
}

#[test]
fn workers_are_placed_on_their_devices_and_keep_them_across_a_crash_and_a_reload() {
    let env = Env::new();
    // Two devices, two workers on each: `workers` follows from them.
    // The service's own env says device 0: the assignment wins.
    env.config(&env.worker_with(
        "gen",
        "fake_worker.py",
        &[("CUDA_VISIBLE_DEVICES", "0")],
        "devices = [3, 5]\nworkers_per_device = 2",
    ));
    env.start_ok();
    let st = env.status();
    let workers = st["services"][0]["workers"].as_array().unwrap().clone();
    assert_eq!(workers.len(), 4, "{st}");
    let want = ["3", "3", "5", "5"];
    for (i, w) in workers.iter().enumerate() {
        assert_eq!(w["device"], want[i].parse::<u64>().unwrap(), "{w}");
        assert_eq!(w["env_set"]["CUDA_VISIBLE_DEVICES"], want[i], "{w}");
        // What the process itself has: the assignment wins over the service's env.
        assert_eq!(
            visible(w["pid"].as_i64().unwrap()).as_deref(),
            Some(want[i])
        );
        // CUDA numbers the GPUs as NVML (and `devices`) does.
        assert_eq!(
            paddock_sys::procs::environ(w["pid"].as_i64().unwrap() as i32)
                .get("CUDA_DEVICE_ORDER")
                .map(String::as_str),
            Some("PCI_BUS_ID"),
            "{w}"
        );
    }
    // A crash: the replacement is on the same device.
    let old = worker(&st, 2);
    kill(old["pid"].as_i64().unwrap() as i32, 9);
    let new = wait_until(Duration::from_secs(30), "worker 2 replaced", || {
        let w = worker(&env.status(), 2);
        (w["state"] == "ready" && w["pid"] != old["pid"]).then_some(w)
    });
    assert_eq!(new["device"], 5);
    assert_eq!(visible(new["pid"].as_i64().unwrap()).as_deref(), Some("5"));
    // A reload: every replacement keeps its slot's device.
    let out = env.run(&["reload"]);
    assert_eq!(out.code, 0, "{out:?}");
    let st = env.status();
    for (i, want) in want.iter().enumerate() {
        let w = worker(&st, i);
        assert_eq!(
            visible(w["pid"].as_i64().unwrap()).as_deref(),
            Some(*want),
            "{w}"
        );
    }
    env.stop_ok();
}

#[test]
fn check_shows_where_each_worker_goes() {
    let env = Env::new();
    env.config(&format!(
        "{}{}",
        env.worker(
            "gen",
            "devices = [3, 5]\nworkers_per_device = 2\nmax_gpu_memory = \"2GiB\""
        ),
        env.worker("any", "devices = \"auto\"")
    ));
    let out = env.run(&["check", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let gpu_of = |name: &str| {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["gpu"]
            .clone()
    };
    let placed = gpu_of("gen");
    assert_eq!(placed["placement"], serde_json::json!([3, 3, 5, 5]), "{v}");
    assert_eq!(placed["max_gpu_memory_bytes"], 2u64 << 30, "{v}");
    assert_eq!(gpu_of("any")["devices"], "auto", "{v}");
    assert!(gpu_of("any")["placement"].is_null(), "{v}");
    let out = env.run(&["check"]);
    assert!(
        out.stdout
            .contains("GPUs: worker 0 on 3, 1 on 3, 2 on 5, 3 on 5; max_gpu_memory 2048 MiB"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("GPUs: every GPU the driver reports at start, 1 worker(s) each"),
        "{}",
        out.stdout
    );
}

#[test]
fn more_workers_than_places_is_a_config_error() {
    let env = Env::new();
    env.config(&env.worker("gen", "devices = [0]\nworkers = 2"));
    let out = env.run(&["check"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("workers") && out.stderr.contains("do not fit on 1 device(s)"),
        "{out:?}"
    );
}

/// This machine's driver state, as NVML tells paddock-sys.
fn no_driver() -> Option<String> {
    paddock_sys::gpu::Gpus::load().devices().err()
}

#[test]
fn without_a_driver_status_metrics_and_doctor_say_so() {
    let env = Env::new();
    env.config(&env.worker("gen", "devices = [0]"));
    env.start_ok();
    let st = env.status();
    let Some(why) = no_driver() else {
        // A machine with an NVIDIA driver: the devices are listed and the gauge
        // says so; the measurements are the device check's (bench/gpu/).
        assert!(st["instance"]["gpus"]["unavailable"].is_null(), "{st}");
        assert!(
            !st["instance"]["gpus"]["devices"]
                .as_array()
                .unwrap()
                .is_empty(),
            "{st}"
        );
        assert_eq!(env.metric("paddock_gpu_driver_available "), 1.0);
        env.stop_ok();
        return;
    };
    assert!(why.starts_with("no NVIDIA driver"), "{why}");
    assert_eq!(st["instance"]["gpus"]["unavailable"], why.as_str(), "{st}");
    assert_eq!(st["instance"]["gpus"]["devices"], serde_json::json!([]));
    let w = worker(&st, 0);
    assert_eq!(
        (w["device"].as_u64(), w["gpu_memory_bytes"].is_null()),
        (Some(0), true),
        "{w}"
    );
    // The human status names why the GPU column is empty.
    let out = env.run(&["status"]);
    assert!(out.stdout.contains("GPU MEMORY"), "{}", out.stdout);
    assert!(out.stdout.contains("no driver"), "{}", out.stdout);
    assert!(
        out.stdout.contains("GPUs: no NVIDIA driver"),
        "{}",
        out.stdout
    );
    // Metrics: the driver gauge is 0 and no worker has a GPU memory figure.
    assert_eq!(env.metric("paddock_gpu_driver_available "), 0.0);
    let (_, text) = env.get("/metrics").unwrap();
    assert!(!text.contains("paddock_worker_gpu_memory_bytes{"), "{text}");
    // doctor: says so, as information, and sees the worker's device.
    let report = json_report(
        env.command(&["doctor", "--json"])
            .stdin(std::process::Stdio::null()),
    );
    let findings = report["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["finding"]
            .as_str()
            .unwrap()
            .starts_with("GPUs: no NVIDIA driver")
            && f["severity"] == "info"),
        "{report}"
    );
    assert_eq!(report["workers"][0]["device"], 0, "{report}");
    assert_eq!(
        report["workers"][0]["cuda_visible_devices"], "0",
        "{report}"
    );
    env.stop_ok();
}

#[test]
fn doctor_flags_a_worker_that_sees_other_devices_than_assigned() {
    let env = Env::new();
    // A wrapper that overrides the assignment, as a careless launch script would.
    let svc = env.worker("gen", "devices = [1]").replacen(
        "command = [\"python3\",",
        "command = [\"env\", \"CUDA_VISIBLE_DEVICES=0,1\", \"CUDA_DEVICE_ORDER=FASTEST_FIRST\", \"python3\",",
        1,
    );
    assert!(
        svc.contains("\"env\", \"CUDA_VISIBLE_DEVICES=0,1\", \"CUDA_DEVICE_ORDER"),
        "{svc}"
    );
    env.config(&svc);
    env.start_ok();
    // A warning: doctor exits 1, with its report.
    let out = env.run(&["doctor", "--json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let flagged: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["finding"].as_str().unwrap().contains("assigned GPU 1"))
        .collect();
    assert_eq!(flagged.len(), 1, "{report}");
    assert_eq!(flagged[0]["severity"], "warning");
    assert!(
        flagged[0]["finding"]
            .as_str()
            .unwrap()
            .contains("sees CUDA_VISIBLE_DEVICES=0,1"),
        "{report}"
    );
    // And the numbering the wrapper changed.
    let reordered: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["finding"]
                .as_str()
                .unwrap()
                .contains("has CUDA_DEVICE_ORDER=FASTEST_FIRST: CUDA may number the GPUs fastest first, so GPU 1 there")
        })
        .collect();
    assert_eq!(reordered.len(), 1, "{report}");
    assert_eq!(reordered[0]["severity"], "warning");
    env.stop_ok();
}
