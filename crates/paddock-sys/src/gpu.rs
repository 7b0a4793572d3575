//! NVIDIA GPUs through NVML (`libnvidia-ml.so.1`), loaded at run time: paddock
//! builds and runs without a driver, and then every answer says so.
//!
//! Invariants:
//! - the library is loaded on first use, never before the daemon forked (NVML may
//!   start threads), and once: `Gpus` is built once per process;
//! - nothing here fails the caller: no driver, no device or a failing call is an
//!   `Err` with a sentence a person can act on.

use std::collections::HashMap;

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;

/// The variable that names the NVML library to load instead of the default.
pub const LIBRARY_VAR: &str = "PADDOCK_NVML_LIBRARY";
/// The NVML library the loader looks for by default.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// One GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub name: String,
    pub memory_total: u64,
    pub memory_used: u64,
    /// The share of the last sample period a kernel ran, in percent (None where
    /// the device does not report it).
    pub utilization_percent: Option<u32>,
}

/// The machine's NVIDIA GPUs, or why they cannot be seen.
#[derive(Debug)]
pub struct Gpus {
    nvml: Result<Nvml, String>,
}

impl Gpus {
    /// Loads NVML: the library `PADDOCK_NVML_LIBRARY` names (a driver installed
    /// off the loader's path), else `libnvidia-ml.so.1`. Without a driver this
    /// still succeeds; every query then answers "no NVIDIA driver (…)".
    pub fn load() -> Gpus {
        match std::env::var_os(LIBRARY_VAR).filter(|p| !p.is_empty()) {
            Some(path) => Gpus::load_from(&path),
            None => Gpus::load_from(std::ffi::OsStr::new(DEFAULT_LIBRARY)),
        }
    }

    /// Loads NVML from `library` (a file name the loader searches for, or a path).
    pub fn load_from(library: &std::ffi::OsStr) -> Gpus {
        let shown = library.to_string_lossy();
        let nvml = Nvml::builder()
            .lib_path(library)
            .init()
            .map_err(|e| match e {
                nvml_wrapper::error::NvmlError::LibloadingError(e) => {
                    format!("no NVIDIA driver ({shown} could not be loaded: {e})")
                }
                nvml_wrapper::error::NvmlError::DriverNotLoaded => {
                    "no NVIDIA driver (NVML is installed but the kernel driver is not loaded)"
                        .into()
                }
                other => format!("no NVIDIA driver (NVML failed to start: {other})"),
            });
        Gpus { nvml }
    }

    /// Whether NVML loaded and started: if not, no answer can change while this
    /// process runs.
    pub fn loaded(&self) -> bool {
        self.nvml.is_ok()
    }

    /// The devices.
    pub fn devices(&self) -> Result<Vec<Device>, String> {
        let nvml = self.nvml.as_ref().map_err(Clone::clone)?;
        let n = nvml
            .device_count()
            .map_err(|e| format!("NVML: counting devices: {e}"))?;
        (0..n)
            .map(|i| {
                let d = nvml
                    .device_by_index(i)
                    .map_err(|e| format!("NVML: device {i}: {e}"))?;
                let mem = d
                    .memory_info()
                    .map_err(|e| format!("NVML: device {i} memory: {e}"))?;
                Ok(Device {
                    index: i,
                    name: d.name().unwrap_or_else(|_| "unknown".into()),
                    memory_total: mem.total,
                    memory_used: mem.used,
                    utilization_percent: d.utilization_rates().ok().map(|u| u.gpu),
                })
            })
            .collect()
    }

    /// GPU memory held by each process that holds some, summed over devices
    /// (compute and graphics contexts).
    pub fn process_memory(&self) -> Result<HashMap<i32, u64>, String> {
        let nvml = self.nvml.as_ref().map_err(Clone::clone)?;
        let n = nvml
            .device_count()
            .map_err(|e| format!("NVML: counting devices: {e}"))?;
        let mut out: HashMap<i32, u64> = HashMap::new();
        for i in 0..n {
            let d = nvml
                .device_by_index(i)
                .map_err(|e| format!("NVML: device {i}: {e}"))?;
            let mut procs = d.running_compute_processes().unwrap_or_default();
            procs.extend(d.running_graphics_processes().unwrap_or_default());
            for p in procs {
                if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                    *out.entry(p.pid as i32).or_default() += bytes;
                }
            }
        }
        Ok(out)
    }
}

/// Whether an AMD GPU stack is present (ROCm's `/dev/kfd`): then workers also get
/// `HIP_VISIBLE_DEVICES` and `ROCR_VISIBLE_DEVICES`.
pub fn amd_present() -> bool {
    std::path::Path::new("/dev/kfd").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_every_answer_says_so() {
        let g = Gpus::load();
        match g.devices() {
            // A machine with a driver (the lent GPU machine): devices are listed.
            Ok(d) => assert!(d.iter().all(|d| d.memory_total > 0)),
            Err(e) => {
                assert!(e.starts_with("no NVIDIA driver"), "{e}");
                assert_eq!(g.process_memory().unwrap_err(), e);
            }
        }
    }

    #[test]
    fn a_library_that_is_not_there_is_named() {
        let g = Gpus::load_from(std::ffi::OsStr::new("/nonexistent/libnvidia-ml.so.1"));
        let e = g.devices().unwrap_err();
        assert!(
            e.starts_with("no NVIDIA driver (/nonexistent/libnvidia-ml.so.1 could not be loaded"),
            "{e}"
        );
    }
}
