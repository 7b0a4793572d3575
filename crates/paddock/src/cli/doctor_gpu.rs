//! `paddock doctor`'s GPU checks: the devices NVML reports (or why none), each
//! worker's visible devices against its assignment, and processes of this
//! instance's services that hold GPU memory with no daemon of the instance owning
//! them (VRAM orphans).
//!
//! Read-only, like the rest of doctor: it names a problem and its fix, and kills
//! nothing.

use std::collections::{BTreeSet, HashMap};

use super::findings::{Finding, Severity, WorkerReport};
use crate::config::Config;
use crate::gpu::GpuStatus;
use crate::status::Status;

pub fn examine(
    config: &Config,
    status: Option<&Status>,
    reports: &mut [WorkerReport],
    findings: &mut Vec<Finding>,
) {
    use paddock_sys::procs;
    let gpus = paddock_sys::gpu::Gpus::load();
    match GpuStatus::read(&gpus) {
        GpuStatus {
            unavailable: None,
            devices,
        } => findings.push(Finding {
            severity: Severity::Info,
            subject: "instance".into(),
            finding: format!(
                "GPUs: {}",
                devices
                    .iter()
                    .map(|d| d.summary())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            fix: "each worker's device is in its row".into(),
        }),
        GpuStatus {
            unavailable: Some(why),
            ..
        } => findings.push(Finding {
            severity: Severity::Info,
            subject: "instance".into(),
            finding: format!("GPUs: {why}"),
            fix: "nothing to do unless a service needs a GPU; then install the NVIDIA driver"
                .into(),
        }),
    }
    let mut ours = BTreeSet::new();
    for svc in status.map(|s| s.services.as_slice()).unwrap_or_default() {
        for w in &svc.workers {
            let Some(pid) = w.pid else { continue };
            let mut tree = procs::tree_of_group(pid);
            if !tree.contains(&pid) {
                tree.push(pid);
            }
            ours.extend(tree.iter().copied());
            if let Some(r) = reports
                .iter_mut()
                .find(|r| r.service == svc.name && r.index == w.index)
            {
                r.device = w.device;
                r.gpu_memory_bytes = w.gpu_memory_bytes;
            }
            let Some(assigned) = w.device else { continue };
            // Each process's environment, read once for both checks.
            let envs: Vec<(i32, HashMap<String, String>)> =
                tree.iter().map(|&p| (p, procs::environ(p))).collect();
            if let Some((p, seen)) = first_other(&envs, crate::gpu::VISIBLE, &assigned.to_string())
            {
                findings.push(Finding {
                    severity: Severity::Warning,
                    subject: format!("{}/{} (pid {pid})", svc.name, w.index),
                    finding: format!(
                        "assigned GPU {assigned}, but its process {p} sees {}",
                        match seen {
                            Some(v) => format!("CUDA_VISIBLE_DEVICES={v}"),
                            None => "every GPU (no CUDA_VISIBLE_DEVICES)".into(),
                        }
                    ),
                    fix: "do not set CUDA_VISIBLE_DEVICES in the command or a wrapper script: `devices` and `workers_per_device` place the workers".into(),
                });
            }
            // CUDA reads that index in its own order unless told NVML's.
            let (order, by_bus) = crate::gpu::ORDER;
            if let Some((p, seen)) = first_other(&envs, order, by_bus) {
                findings.push(Finding {
                    severity: Severity::Warning,
                    subject: format!("{}/{} (pid {pid})", svc.name, w.index),
                    finding: format!(
                        "its process {p} has {}: CUDA may number the GPUs fastest first, so GPU {assigned} there can be another GPU than nvidia-smi's {assigned}",
                        match seen {
                            Some(v) => format!("{order}={v}"),
                            None => format!("no {order}"),
                        }
                    ),
                    fix: format!("do not set {order} in the command or a wrapper script: paddock sets {order}={by_bus} so that its device numbers are NVML's"),
                });
            }
        }
    }
    let Ok(per_pid) = gpus.process_memory() else {
        return;
    };
    // In a container without the host's PID namespace NVML names host pids, which
    // match no process here: then nothing can be measured per worker. A process
    // that ended between NVML's answer and the look here is not one: it counts
    // only if NVML still lists it afterwards.
    let mut unseen: Vec<i32> = per_pid
        .keys()
        .copied()
        .filter(|&p| procs::stat(p).is_none())
        .collect();
    if !unseen.is_empty() {
        let relisted = gpus.process_memory().unwrap_or_default();
        unseen.retain(|p| relisted.contains_key(p));
    }
    if !unseen.is_empty() {
        let limited = config.services.iter().any(|s| s.gpu.max_memory > 0);
        findings.push(Finding {
            severity: if limited { Severity::Warning } else { Severity::Info },
            subject: "instance".into(),
            finding: format!(
                "NVML reports {} process(es) holding GPU memory that this PID namespace cannot see (pid {}): a container without the host's PID namespace? Then no worker's GPU memory can be measured{}",
                unseen.len(),
                unseen.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
                if limited { ", and max_gpu_memory never triggers" } else { "" }
            ),
            fix: "run the container in the host's PID namespace (docker run --pid=host; Kubernetes hostPID: true)".into(),
        });
    }
    let names: BTreeSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    for (pid, bytes) in per_pid {
        let env = procs::environ(pid);
        let Some(svc) = env.get("PADDOCK_SERVICE") else {
            continue;
        };
        if !names.contains(svc.as_str()) || ours.contains(&pid) {
            continue;
        }
        findings.push(Finding {
            severity: Severity::Error,
            subject: format!("pid {pid}"),
            finding: format!(
                "{} ({}), a worker of service {svc}, holds {} MiB of GPU memory, and no running daemon of instance {} owns it",
                short_command(&procs::cmdline(pid)),
                env.get("PADDOCK_WORKER").map(|w| format!("worker {w}")).unwrap_or_default(),
                bytes >> 20,
                config.instance.name
            ),
            fix: format!("end it (kill {pid}); paddock's reaper should have: please report how it escaped"),
        });
    }
}

/// The first process whose `var` is not `want`, with what it has instead.
fn first_other(
    envs: &[(i32, HashMap<String, String>)],
    var: &str,
    want: &str,
) -> Option<(i32, Option<String>)> {
    envs.iter().find_map(|(p, env)| {
        let seen = env.get(var);
        (seen.map(String::as_str) != Some(want)).then(|| (*p, seen.cloned()))
    })
}

/// A command line for one line of a report: its program's file name, whitespace
/// collapsed, cut at 60 characters.
fn short_command(cmdline: &str) -> String {
    let mut words = cmdline.split_whitespace();
    let program = words.next().unwrap_or("?");
    let program = program.rsplit('/').next().unwrap_or(program);
    let line = std::iter::once(program)
        .chain(words)
        .collect::<Vec<_>>()
        .join(" ");
    match line.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_command_is_shown_on_one_short_line() {
        assert_eq!(
            super::short_command("/usr/bin/python3 -u  serve.py\n--port 1"),
            "python3 -u serve.py --port 1"
        );
        let long = super::short_command(&format!("/bin/sh -c '{}'", "x ".repeat(100)));
        assert_eq!(long.chars().count(), 61, "{long}");
        assert!(
            long.starts_with("sh -c 'x x") && long.ends_with('…'),
            "{long}"
        );
    }
}
