//! GPUs through the daemon's real NVML path, with a stand-in driver library
//! (fixtures/fake_nvml.c, loaded through `PADDOCK_NVML_LIBRARY`; CI has no GPU):
//! each worker's GPU memory summed over its process tree in status, metrics and
//! doctor; `devices = "auto"` from what NVML lists; `max_gpu_memory` recycling
//! replacement-first where the device has room and retire-first where it has not,
//! never taking a service to zero; and no process of the instance holding GPU
//! memory 2 s after a deadline kill, a `stop` or a daemon SIGKILL, as NVML tells it.
//!
//! The fake follows the driver where it matters here: a process holds GPU memory
//! while it lives, and a device's used memory is what its live processes hold.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_nvml::{FakeNvml, GIB, MIB};
use crate::harness::{Env, alive, call, json_report, kill, wait_until};

/// Kills a process at the end of the test, whatever happens in between.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill(self.0, 9);
    }
}

fn vram(env: &Env, service: &str, body: Value) -> Value {
    let r = call(env.port, service, &body);
    assert_eq!(r.code, 200, "{}", r.text());
    r.json()
}

fn workers(st: &Value, service: &str) -> Vec<Value> {
    st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap_or_else(|| panic!("no service {service}: {st}"))["workers"]
        .as_array()
        .unwrap()
        .clone()
}

/// The "pid" of a worker's status or of a `vram` answer (the holder's).
fn pid_of(w: &Value) -> i32 {
    w["pid"].as_i64().unwrap() as i32
}

#[test]
fn through_nvml_each_workers_gpu_memory_is_summed_over_its_tree_in_status_metrics_and_doctor() {
    let mut env = Env::new();
    let nvml = FakeNvml::install(&mut env, &[("Fake H200", 8 * GIB), ("Fake H200", 8 * GIB)]);
    // "auto": every GPU NVML lists, one worker on each.
    env.config(&nvml.service(&env, "gen", 100, "devices = \"auto\"\nworkers = 2"));
    env.start_ok();
    let st = env.status();
    let ws = workers(&st, "gen");
    assert_eq!(
        ws.iter().map(|w| w["device"].as_u64()).collect::<Vec<_>>(),
        [Some(0), Some(1)],
        "{st}"
    );
    let devices = st["instance"]["gpus"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{st}");
    assert_eq!(devices[0]["name"], "Fake H200");
    assert_eq!(devices[0]["memory_total_bytes"], 8 * GIB);
    // Each worker holds 100 MiB from its setup; add some in the workers and in
    // child processes of theirs, wherever the requests land.
    let mut want: HashMap<i32, u64> = ws.iter().map(|w| (pid_of(w), 100 * MIB)).collect();
    for (mb, child) in [(300, false), (200, true), (50, true), (25, false)] {
        let r = vram(&env, "gen", json!({"op": "vram", "mb": mb, "child": child}));
        let worker = r["worker"].as_i64().unwrap() as i32;
        *want
            .get_mut(&worker)
            .expect("a worker of the service answered") += mb * MIB;
    }
    // The daemon reads NVML once a second: wait for a reading with all of it.
    let st = wait_until(
        Duration::from_secs(5),
        "a reading with every holder",
        || {
            let st = env.status();
            workers(&st, "gen")
                .iter()
                .all(|w| w["gpu_memory_bytes"] == want[&pid_of(w)])
                .then_some(st)
        },
    );
    for w in workers(&st, "gen") {
        // The device's used memory is what its worker's tree holds.
        let d = w["device"].as_u64().unwrap() as usize;
        assert_eq!(
            st["instance"]["gpus"]["devices"][d]["memory_used_bytes"],
            want[&pid_of(&w)],
            "{st}"
        );
    }
    let total: u64 = want.values().sum();
    assert_eq!(env.metric("paddock_gpu_driver_available "), 1.0);
    assert_eq!(env.metric("paddock_worker_gpu_memory_bytes{"), total as f64);
    assert_eq!(env.metric("paddock_gpu_memory_used_bytes{"), total as f64);
    assert_eq!(
        env.metric("paddock_gpu_memory_total_bytes{"),
        (16 * GIB) as f64
    );
    // How busy each GPU is (the stand-in's device 1 is 10 % busy).
    assert_eq!(
        st["instance"]["gpus"]["devices"][1]["utilization_percent"],
        10
    );
    assert_eq!(
        env.metric("paddock_gpu_utilization_ratio{device=\"1\"}"),
        0.1
    );
    // The human status names the devices and each worker's share.
    let out = env.run(&["status"]);
    let used = |d: usize| want[&pid_of(&workers(&st, "gen")[d])] >> 20;
    assert!(
        out.stdout.contains(&format!(
            "GPUs: 0 Fake H200 ({} of 8192 MiB in use, 0 % busy); 1 Fake H200 ({} of 8192 MiB in use, 10 % busy)",
            used(0),
            used(1)
        )),
        "{}",
        out.stdout
    );
    for (pid, bytes) in &want {
        let row = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().any(|c| c == pid.to_string()))
            .unwrap_or_else(|| panic!("no row for pid {pid}: {}", out.stdout));
        assert!(row.contains(&format!("{} MiB", bytes >> 20)), "{row}");
    }
    // doctor: the devices, each worker's memory, and nothing flagged.
    let out = env.run(&["doctor", "--json"]);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let findings = report["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["finding"]
            .as_str()
            .unwrap()
            .starts_with("GPUs: 0 Fake H200 (")),
        "{report}"
    );
    assert!(
        !findings
            .iter()
            .any(|f| f["severity"] != "info" && f["finding"].as_str().unwrap().contains("GPU")),
        "{report}"
    );
    let reported: u64 = report["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["gpu_memory_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(reported, total, "{report}");
    // After stop, NVML lists none of the instance's processes (2 s bound).
    let pids: Vec<i32> = want.keys().copied().collect();
    env.stop_ok();
    let t = Instant::now();
    wait_until(
        Duration::from_secs(2),
        "GPU memory freed after stop",
        || nvml.holders().is_empty().then_some(()),
    );
    eprintln!("GPU memory freed {:?} after stop returned", t.elapsed());
    assert!(pids.iter().all(|&p| !alive(p)));
}

#[test]
fn no_process_holds_gpu_memory_2s_after_a_deadline_kill_or_a_daemon_sigkill() {
    let mut env = Env::new();
    let nvml = FakeNvml::install(&mut env, &[("Fake H200", 8 * GIB)]);
    env.config(&nvml.service(
        &env,
        "gen",
        100,
        "devices = [0]\nworkers = 1\nrequest_timeout = \"1s\"",
    ));
    env.start_ok();
    let old = pid_of(&workers(&env.status(), "gen")[0]);
    let child = pid_of(&vram(
        &env,
        "gen",
        json!({"op": "vram", "mb": 50, "child": true}),
    ));
    assert_eq!(
        nvml.holders(),
        HashMap::from([(old, 100 * MIB), (child, 50 * MIB)])
    );
    // A hung request: the worker's group is killed at its deadline.
    let r = call(env.port, "gen", &json!({"op": "spin"}));
    assert_eq!(r.code, 504, "{}", r.text());
    let t = Instant::now();
    wait_until(
        Duration::from_secs(2),
        "the killed worker's GPU memory freed",
        || {
            let h = nvml.holders();
            (!h.contains_key(&old) && !h.contains_key(&child)).then_some(())
        },
    );
    eprintln!(
        "deadline kill: GPU memory freed {:?} after the 504",
        t.elapsed()
    );
    // The replacement loads on the same device.
    let new = wait_until(Duration::from_secs(30), "the replacement ready", || {
        let w = workers(&env.status(), "gen")[0].clone();
        (w["state"] == "ready" && pid_of(&w) != old).then(|| pid_of(&w))
    });
    assert_eq!(nvml.holders(), HashMap::from([(new, 100 * MIB)]));
    let child = pid_of(&vram(
        &env,
        "gen",
        json!({"op": "vram", "mb": 50, "child": true}),
    ));
    assert_eq!(nvml.holders().len(), 2);
    // The daemon SIGKILLed: nothing of the instance holds GPU memory 2 s later.
    kill(env.daemon_pid(), 9);
    let t = Instant::now();
    wait_until(
        Duration::from_secs(2),
        "GPU memory freed after the daemon's SIGKILL",
        || nvml.holders().is_empty().then_some(()),
    );
    eprintln!("daemon SIGKILL: GPU memory freed {:?} after", t.elapsed());
    assert!(!alive(new) && !alive(child));
    // doctor agrees: no process of the instance holds GPU memory.
    let report = json_report(&mut env.command(&["doctor", "--json"]));
    assert!(
        !report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["finding"].as_str().unwrap().contains("of GPU memory")),
        "{report}"
    );
}

#[test]
fn doctor_names_a_process_that_escaped_its_worker_holding_gpu_memory() {
    let mut env = Env::new();
    let nvml = FakeNvml::install(&mut env, &[("Fake H200", 8 * GIB)]);
    env.config(&nvml.service(&env, "gen", 100, "devices = [0]\nworkers = 1"));
    env.start_ok();
    // A process in a session of its own: out of the worker's group, so the
    // group's kill misses it, as a careless `setsid` or daemonising library would.
    let escaped = pid_of(&vram(
        &env,
        "gen",
        json!({"op": "vram", "mb": 64, "escape": true}),
    ));
    let _cleanup = KillOnDrop(escaped);
    env.stop_ok();
    assert!(alive(escaped));
    assert_eq!(nvml.holders(), HashMap::from([(escaped, 64 * MIB)]));
    let out = env.run(&["doctor", "--json"]);
    assert_eq!(out.code, 1, "hazards found: {out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let f = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subject"] == format!("pid {escaped}"))
        .unwrap_or_else(|| panic!("no finding for pid {escaped}: {report}"))
        .clone();
    assert_eq!(f["severity"], "error", "{f}");
    let text = f["finding"].as_str().unwrap();
    // Its command, on one line and cut short (a `python -c` script is long).
    assert!(
        text.starts_with("python") && text.contains(" -c import os, signal, sys path = "),
        "{text}"
    );
    assert!(text.contains("… (worker 0), a worker"), "{text}");
    assert!(
        text.contains("a worker of service gen, holds 64 MiB of GPU memory")
            && text.contains("no running daemon of instance t owns it"),
        "{text}"
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("kill {escaped}")),
        "{f}"
    );
    kill(escaped, 9);
    wait_until(Duration::from_secs(2), "the escaped process gone", || {
        nvml.holders().is_empty().then_some(())
    });
    let out = env.run(&["doctor", "--json"]);
    assert!(!out.stdout.contains(&format!("pid {escaped}")), "{out:?}");
}

#[test]
fn doctor_warns_when_nvml_names_processes_this_pid_namespace_cannot_see() {
    let mut env = Env::new();
    let nvml = FakeNvml::install(&mut env, &[("Fake H200", 8 * GIB)]);
    // A process of another PID namespace, as the driver lists a host's processes
    // to a container: a pid above pid_max, so it exists nowhere here.
    std::fs::create_dir_all(nvml.dir.join("gpu0")).unwrap();
    std::fs::write(nvml.dir.join("gpu0/host-99999999"), (512 * MIB).to_string()).unwrap();
    env.config(&nvml.service(
        &env,
        "gen",
        100,
        "devices = [0]\nworkers = 1\nmax_gpu_memory = \"4GiB\"",
    ));
    env.start_ok();
    let out = env.run(&["doctor", "--json"]);
    assert_eq!(out.code, 1, "a warning: {out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let f = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["finding"]
                .as_str()
                .unwrap()
                .contains("this PID namespace cannot see (pid 99999999)")
        })
        .unwrap_or_else(|| panic!("{report}"))
        .clone();
    assert_eq!(f["severity"], "warning", "{f}");
    assert!(
        f["finding"]
            .as_str()
            .unwrap()
            .contains("max_gpu_memory never triggers"),
        "{f}"
    );
    assert!(f["fix"].as_str().unwrap().contains("--pid=host"), "{f}");
    env.stop_ok();
}

/// Every worker's state in one status read, for the "never zero" sampling.
fn ready_count(st: &Value, service: &str) -> usize {
    workers(st, service)
        .iter()
        .filter(|w| w["state"] == "ready" || w["state"] == "busy")
        .count()
}

#[test]
fn max_gpu_memory_recycles_replacement_first_only_where_the_device_has_room() {
    let mut env = Env::new();
    let nvml = FakeNvml::install(
        &mut env,
        &[("Roomy", 16 * GIB), ("Tight", 3 * GIB), ("Tiny", 2 * GIB)],
    );
    let svc = |name: &str, device: u32, workers: u32| {
        nvml.service(
            &env,
            name,
            256,
            &format!(
                "devices = [{device}]\nworkers_per_device = {workers}\nmax_gpu_memory = \"1GiB\""
            ),
        )
    };
    env.config(&format!(
        "{}{}{}",
        svc("roomy", 0, 2),
        svc("tight", 1, 2),
        svc("solo", 2, 1)
    ));
    env.start_ok();
    let before = env.status();
    // One worker of each service leaks past 1 GiB: 256 + 1280 MiB.
    let mut leaked = HashMap::new();
    for name in ["roomy", "tight", "solo"] {
        let r = vram(&env, name, json!({"op": "vram", "mb": 1280}));
        leaked.insert(name, r["worker"].as_i64().unwrap() as i32);
    }
    // Until each leaking worker is replaced, no service drops to zero ready workers.
    let mut reads = 0;
    let after = wait_until(
        Duration::from_secs(60),
        "the three leaking workers replaced",
        || {
            let st = env.status();
            reads += 1;
            for name in ["roomy", "tight", "solo"] {
                assert!(ready_count(&st, name) >= 1, "{name} dropped to zero: {st}");
            }
            let settled = ["roomy", "tight", "solo"].iter().all(|name| {
                let ws = workers(&st, name);
                ws.len() == workers(&before, name).len()
                    && ws.iter().all(|w| w["state"] == "ready")
                    && !ws.iter().any(|w| leaked.values().any(|&p| p == pid_of(w)))
            });
            (settled && leaked.values().all(|&p| !alive(p))).then_some(st)
        },
    );
    eprintln!("{reads} status reads while recycling, every service serving in each");
    for name in ["roomy", "tight", "solo"] {
        for w in &workers(&after, name) {
            // The replacement is on its slot's device and holds its 256 MiB.
            let pid = pid_of(w);
            assert_eq!(
                paddock_sys::procs::environ(pid)
                    .get("CUDA_VISIBLE_DEVICES")
                    .map(String::as_str),
                Some(w["device"].to_string().as_str()),
                "{w}"
            );
        }
    }
    // How each was replaced, and why, in the daemon's log.
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    let line = |name: &str| {
        log.lines()
            .find(|l| l.contains("recycling worker") && l.contains(&format!("service={name}")))
            .unwrap_or_else(|| panic!("no recycle of {name} in the log:\n{log}"))
            .to_string()
    };
    let roomy = line("roomy");
    assert!(
        roomy.contains("(start-first):")
            && roomy
                .contains("GPU memory 1536 MiB is over max_gpu_memory (1024 MiB); device 0 has"),
        "{roomy}"
    );
    let tight = line("tight");
    assert!(
        tight.contains("(stop-first, as its device is not known to have room for a second copy)")
            && tight.contains("device 1 has 1280 MiB free"),
        "{tight}"
    );
    let solo = line("solo");
    assert!(
        solo.contains("(start-first, though its device is not known to have room for a second copy: no other worker is ready)")
            && solo.contains("device 2 has 512 MiB free"),
        "{solo}"
    );
    // NVML: every leaking worker's memory is gone; each worker holds its 256 MiB.
    let held = nvml.holders();
    assert_eq!(held.len(), 5, "{held:?}");
    assert!(held.values().all(|&b| b == 256 * MIB), "{held:?}");
    env.stop_ok();
}

/// The GPU device check (bench/gpu/check.py) runs on a lent GPU machine with
/// little time to spare, so a mistake in it must show here first: its dry run,
/// against a stand-in torch and nvidia-smi sharing the fake NVML's state, passes
/// every part. (It measures nothing about a GPU.)
#[test]
fn the_gpu_device_checks_dry_run_passes_every_part() {
    let env = Env::new();
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(format!("{root}/bench/gpu/dryrun.sh"))
        .env("PADDOCK", crate::harness::BIN)
        .env("GPU_CHECK_PORT", crate::harness::free_port().to_string())
        .env("OUT", env.path())
        .env_remove("PADDOCK_NVML_LIBRARY")
        // As on a machine that does not set it: output must not depend on it.
        .env_remove("PYTHONUNBUFFERED")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let summary = text.split("--- summary").nth(1).unwrap_or_default();
    assert_eq!(summary.matches("PASS: ").count(), 5, "{text}");
    assert!(!summary.contains("FAIL"), "{text}");
    // The report is also written where the device tool collects it.
    let report = std::fs::read_to_string(env.path().join("gpu-check.txt")).unwrap();
    assert!(report.contains("--- summary"), "{report}");
}
