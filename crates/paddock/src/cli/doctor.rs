//! `paddock doctor [--json]`: what in this instance's setup can make a model hang,
//! crash or crawl, each with a severity and a one-line fix.
//!
//! For each worker of a running instance: the OpenMP runtimes mapped into its
//! processes (libgomp, Intel's libiomp5, LLVM's libomp, and the copies wheels vendor
//! under hashed names), its BLAS libraries, its OS threads, its environment. For the
//! instance: OpenMP threads against cores, environment that hides hazards instead of
//! fixing them, forks the SDK's fork guard saw, who holds each configured port (said,
//! never killed), the lock holder, the state folder's
//! permissions, folders of daemons that no longer run, the GPUs (`doctor_gpu.rs`)
//! and the SDK each worker's interpreter imports (`doctor_sdk.rs`). Without a running instance it checks what it can: the config
//! and the state folder. It only reads: nothing is killed, changed or removed.
//!
//! Exit status: 0 when nothing is a hazard (info findings only), 1 otherwise.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use comfy_table::{Table, presets};
use serde::Serialize;

use super::{client, output};
use crate::config::Config;
use crate::control::{Reply, Request};
use crate::exit;
use crate::instance::{LockInfo, Paths};
use crate::status::Status;

pub use super::findings::{Finding, Severity, WorkerReport};

#[derive(Debug, Serialize)]
pub struct Report {
    pub instance: String,
    pub running: bool,
    pub cores: usize,
    pub workers: Vec<WorkerReport>,
    pub findings: Vec<Finding>,
    /// No warning and no error.
    pub clean: bool,
}

/// Environment variables that silence a hazard instead of removing it.
const MASKS: &[(&str, &str, &str)] = &[
    (
        "KMP_DUPLICATE_LIB_OK",
        "lets two OpenMP runtimes load into one process (Intel's own message calls it unsafe: it may crash or give wrong results)",
        "remove it and make every library use one OpenMP runtime (install them from the same channel: all pip or all conda)",
    ),
    (
        "OBJC_DISABLE_INITIALIZE_FORK_SAFETY",
        "turns off macOS's check that aborts a child forked while Objective-C was initialising in another thread; the child can then deadlock instead",
        "remove it and avoid forking a process that has threads (use multiprocessing's forkserver or spawn)",
    ),
];

/// A mapped file's kind, from its name: an OpenMP runtime or a BLAS library.
pub fn classify(path: &str) -> Option<&'static str> {
    let name = path.rsplit('/').next().unwrap_or(path);
    // A stem, then `.so…` or a vendored copy's `-<hash>.so…`.
    let stem = |stems: &[&str]| {
        stems.iter().any(|st| {
            name.strip_prefix(st)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-'))
        })
    };
    let openmp = stem(&["libgomp", "libiomp5", "libomp"]);
    let blas = [
        "libopenblas",
        "libscipy_openblas",
        "libmkl_rt",
        "libmkl_core",
        "libblis",
        "libflexiblas",
        "libcblas",
        "libblas.",
    ];
    if openmp {
        Some("openmp")
    } else if blas.iter().any(|p| name.starts_with(p)) {
        Some("blas")
    } else {
        None
    }
}

pub fn run(config: &Config, json: bool) -> i32 {
    let report = examine(config);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", render(&report, output::stdout_is_tty()));
    }
    if report.clean {
        exit::OK
    } else {
        exit::FAILURE
    }
}

fn examine(config: &Config) -> Report {
    let paths = Paths::of(config);
    let cores = paddock_sys::available_cores();
    let mut findings = vec![];
    let mut workers = vec![];
    let status = if client::running(&paths) {
        match client::request(&paths, &Request::Status) {
            Ok(Reply::Status { status }) => Some(status),
            _ => None,
        }
    } else {
        None
    };
    match &status {
        Some(s) => examine_workers(s, cores, &mut workers, &mut findings),
        None => findings.push(Finding {
            severity: Severity::Info,
            subject: "instance".into(),
            finding: format!(
                "instance {} is not running: its workers were not examined",
                config.instance.name
            ),
            fix: "start it (paddock start) and run doctor again".into(),
        }),
    }
    if let Some(info) = LockInfo::read_settled(&paths.lock).filter(|_| status.is_some()) {
        findings.push(Finding {
            severity: Severity::Info,
            subject: "instance".into(),
            finding: format!("the instance lock is held by {}", info.describe()),
            fix: "nothing to do".into(),
        });
    }
    for s in &config.services {
        for (var, masks, fix) in MASKS {
            if s.env.contains_key(*var) {
                findings.push(Finding {
                    severity: Severity::Warning,
                    subject: format!("service {}", s.name),
                    finding: format!("its env sets {var}, which {masks}"),
                    fix: (*fix).into(),
                });
            }
        }
    }
    examine_ports(config, &mut findings);
    examine_state_folder(&paths, &mut findings);
    super::doctor_gpu::examine(config, status.as_deref(), &mut workers, &mut findings);
    super::doctor_sdk::examine(config, status.as_deref(), &mut findings);
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let clean = findings.iter().all(|f| f.severity == Severity::Info);
    Report {
        instance: config.instance.name.to_string(),
        running: status.is_some(),
        cores,
        workers,
        findings,
        clean,
    }
}

fn examine_workers(
    status: &Status,
    cores: usize,
    workers: &mut Vec<WorkerReport>,
    findings: &mut Vec<Finding>,
) {
    use paddock_sys::procs;
    let mut omp_total = 0;
    for svc in &status.services {
        for w in &svc.workers {
            let Some(pid) = w.pid else { continue };
            let subject = format!("{}/{} (pid {pid})", svc.name, w.index);
            let mut pids = procs::tree_of_group(pid);
            if pids.is_empty() {
                pids.push(pid);
            }
            let mut r = WorkerReport {
                service: svc.name.clone(),
                index: w.index,
                pid,
                ..Default::default()
            };
            let (mut openmp, mut blas) = (BTreeSet::new(), BTreeSet::new());
            for &p in &pids {
                r.threads += procs::thread_count(p).unwrap_or(0);
                let mapped = procs::mapped_files(p);
                let runtimes: BTreeSet<&String> = mapped
                    .iter()
                    .filter(|f| classify(f) == Some("openmp"))
                    .collect();
                if runtimes.len() > 1 {
                    findings.push(Finding {
                        severity: Severity::Error,
                        subject: subject.clone(),
                        finding: format!(
                            "{} OpenMP runtimes in one process (pid {p}): {}; each keeps its own thread pool and they can deadlock, crash or oversubscribe the cores",
                            runtimes.len(),
                            runtimes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                        fix: "make every library use one OpenMP runtime (install them from the same channel; do not load a second libgomp/libomp by hand)".into(),
                    });
                }
                for f in mapped {
                    match classify(&f) {
                        Some("openmp") => {
                            openmp.insert(f);
                        }
                        Some("blas") => {
                            blas.insert(f);
                        }
                        _ => {}
                    }
                }
            }
            let env = procs::environ(pid);
            r.omp_num_threads = env.get("OMP_NUM_THREADS").and_then(|v| v.parse().ok());
            r.cuda_visible_devices = env.get("CUDA_VISIBLE_DEVICES").cloned();
            for (var, masks, fix) in MASKS {
                if env.contains_key(*var) {
                    findings.push(Finding {
                        severity: Severity::Warning,
                        subject: subject.clone(),
                        finding: format!("{var} is set, which {masks}"),
                        fix: (*fix).into(),
                    });
                }
            }
            if blas.len() > 1 {
                findings.push(Finding {
                    severity: Severity::Info,
                    subject: subject.clone(),
                    finding: format!(
                        "{} BLAS libraries, each with its own thread pool: {}",
                        blas.len(),
                        blas.iter()
                            .map(|p| p.rsplit('/').next().unwrap_or(p))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    fix: "nothing to do unless their threads together oversubscribe the cores (see the thread count)".into(),
                });
            }
            if w.forks_with_threads > 0 {
                findings.push(Finding {
                    severity: Severity::Warning,
                    subject: subject.clone(),
                    finding: format!(
                        "forked {} time(s) with several OS threads (last: {}); the children may hang",
                        w.forks_with_threads,
                        w.last_fork.as_deref().unwrap_or("unknown")
                    ),
                    fix: "use multiprocessing's forkserver or spawn start method (docs/operations.md, \"Forks\")".into(),
                });
            }
            if !openmp.is_empty() {
                omp_total += r.omp_num_threads.unwrap_or(cores);
            }
            r.openmp = openmp.into_iter().collect();
            r.blas = blas.into_iter().collect();
            workers.push(r);
        }
    }
    if omp_total > cores {
        findings.push(Finding {
            severity: Severity::Warning,
            subject: "instance".into(),
            finding: format!(
                "the workers' OpenMP pools total {omp_total} threads on {cores} cores: they preempt each other and each parallel region waits for the slowest"
            ),
            fix: "set OMP_NUM_THREADS (and MKL/OPENBLAS_NUM_THREADS) in the services' env so that workers × threads ≤ cores, or remove your override (paddock's default divides the cores)".into(),
        });
    }
    let threads: usize = workers.iter().map(|w| w.threads).sum();
    findings.push(Finding {
        severity: Severity::Info,
        subject: "instance".into(),
        finding: format!(
            "{} worker(s) with {threads} OS threads in all, on {cores} cores",
            workers.len()
        ),
        fix: "nothing to do".into(),
    });
}

/// Who holds each port the config names (never killed: only said).
fn examine_ports(config: &Config, findings: &mut Vec<Finding>) {
    use crate::config::PortSpec;
    let mut ports = vec![("gateway".to_string(), config.instance.listen.port())];
    for s in &config.services {
        if let Some(PortSpec::Fixed(p)) = s.port {
            ports.push((format!("service {}", s.name), p));
        }
    }
    for (what, port) in ports {
        let Some(holders) = paddock_sys::procs::listener_pids(port) else {
            continue;
        };
        if holders.is_empty() {
            findings.push(Finding {
                severity: Severity::Info,
                subject: what,
                finding: format!("port {port} is held by a process paddock cannot see (another user's?)"),
                fix: "nothing to do if that is this instance; otherwise stop that program or change the port".into(),
            });
            continue;
        }
        let who: Vec<String> = holders
            .iter()
            .map(|&pid| format!("pid {pid} ({})", paddock_sys::procs::cmdline(pid)))
            .collect();
        findings.push(Finding {
            severity: Severity::Info,
            subject: what,
            finding: format!("port {port} is held by {}", who.join(", ")),
            fix: "nothing to do if that is this instance; otherwise stop that program or change the port".into(),
        });
    }
}

fn examine_state_folder(paths: &Paths, findings: &mut Vec<Finding>) {
    let loose = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| m.permissions().mode() & 0o077)
            .filter(|bits| *bits != 0)
    };
    for p in [&paths.dir, &paths.logs] {
        if let Some(bits) = loose(p) {
            findings.push(Finding {
                severity: Severity::Warning,
                subject: "state folder".into(),
                finding: format!(
                    "{} is open to other users (mode bits {bits:o} for group/others)",
                    p.display()
                ),
                fix: format!("chmod 700 {}", p.display()),
            });
        }
    }
    // Folders of instances whose daemon no longer runs (their lock is free).
    let Some(root) = paths.dir.parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let lock = e.path().join("lock");
        if e.path() == paths.dir || !lock.exists() {
            continue;
        }
        if let Ok(false) = paddock_sys::lock::is_held(&lock) {
            findings.push(Finding {
                severity: Severity::Info,
                subject: "state folder".into(),
                finding: format!(
                    "{} belongs to an instance whose daemon no longer runs",
                    e.path().display()
                ),
                fix: format!(
                    "keep it for its logs and jobs, or remove it: rm -r {}",
                    e.path().display()
                ),
            });
        }
    }
}

fn render(r: &Report, tty: bool) -> String {
    let mut out = format!(
        "instance {} — {}, {} cores\n",
        r.instance,
        if r.running { "running" } else { "not running" },
        r.cores
    );
    if !r.workers.is_empty() {
        let mut t = Table::new();
        t.load_style(if tty {
            presets::UTF8_FULL_CONDENSED
        } else {
            presets::ASCII_MARKDOWN
        });
        t.set_header([
            "WORKER",
            "PID",
            "THREADS",
            "OMP",
            "OPENMP RUNTIMES",
            "BLAS",
            "GPU (SEES)",
        ]);
        for w in &r.workers {
            let gpu = match (w.device, &w.cuda_visible_devices) {
                (None, None) => "-".to_string(),
                (d, seen) => format!(
                    "{} ({})",
                    d.map_or("-".into(), |d| d.to_string()),
                    seen.as_deref().unwrap_or("all")
                ),
            };
            let names = |v: &[String]| {
                v.iter()
                    .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            t.add_row([
                format!("{}/{}", w.service, w.index),
                w.pid.to_string(),
                w.threads.to_string(),
                w.omp_num_threads.map_or("-".into(), |n| n.to_string()),
                names(&w.openmp),
                names(&w.blas),
                gpu,
            ]);
        }
        out.push_str(&format!("{t}\n"));
    }
    for f in &r.findings {
        let tag = match f.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "WARN",
            Severity::Info => "info",
        };
        out.push_str(&format!(
            "{tag:5} {}: {}\n      fix: {}\n",
            f.subject, f.finding, f.fix
        ));
    }
    out.push_str(if r.clean {
        "no hazard found\n"
    } else {
        "hazards found (exit 1)\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn libraries_are_told_apart_by_name_vendored_copies_included() {
        for p in [
            "/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0",
            "/venv/faiss_cpu.libs/libgomp-e985bcbb.so.1.0.0",
            "/opt/intel/lib/libiomp5.so",
            "/usr/lib/llvm-16/lib/libomp.so.5",
            "/venv/torch/lib/libomp-a34b3233.so",
        ] {
            assert_eq!(classify(p), Some("openmp"), "{p}");
        }
        for p in [
            "/venv/numpy.libs/libscipy_openblas64_-32a4b2a6.so",
            "/venv/faiss_cpu.libs/libopenblaso-r0-d77a1985.3.15.so",
            "/opt/conda/lib/libmkl_rt.so.2",
        ] {
            assert_eq!(classify(p), Some("blas"), "{p}");
        }
        for p in [
            "/usr/lib/libc.so.6",
            "/usr/lib/libombrello.so",
            "/x/libgompx",
        ] {
            assert_ne!(classify(p), Some("openmp"), "{p}");
        }
    }
}
