//! GPUs as paddock's decisions see them: which device a worker gets (the
//! variables that pin it there), how much GPU memory a worker holds, what `status`
//! shows, and whether a recycle for `max_gpu_memory` may start the replacement
//! before the old worker goes.
//!
//! Everything reads the machine through [`GpuProbe`]: NVML in the daemon
//! (`paddock_sys::gpu::Gpus`), a fake in the tests (CI has no GPU).
//!
//! Invariants:
//! - a worker's device is in its environment (`CUDA_VISIBLE_DEVICES`, and the AMD
//!   variables where ROCm is present) and nowhere else: `assigned_device` reads it
//!   back, so status and the worker agree by construction;
//! - without a driver nothing fails: every GPU field says why it is empty.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

pub use paddock_sys::gpu::Device;

/// The variable that pins a worker to its device.
pub const VISIBLE: &str = "CUDA_VISIBLE_DEVICES";
/// ROCm's counterparts, set too where `/dev/kfd` exists.
pub const VISIBLE_AMD: [&str; 2] = ["HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"];
/// CUDA numbers devices fastest first unless told otherwise; NVML (nvidia-smi,
/// `devices`, `status`) numbers them by PCI bus. A placed worker gets this so that
/// its device index means the same GPU to CUDA as to paddock.
pub const ORDER: (&str, &str) = ("CUDA_DEVICE_ORDER", "PCI_BUS_ID");

/// Why the GPUs cannot be seen or read ("no NVIDIA driver (…)").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GpuError(pub String);

impl From<&str> for GpuError {
    fn from(s: &str) -> GpuError {
        GpuError(s.to_string())
    }
}

/// What paddock asks of the GPUs.
pub trait GpuProbe: Send + Sync {
    /// The devices, or why there are none to see ("no NVIDIA driver (…)").
    fn devices(&self) -> Result<Vec<Device>, GpuError>;
    /// GPU memory per process holding some, by pid.
    fn process_memory(&self) -> Result<HashMap<i32, u64>, GpuError>;
}

impl GpuProbe for paddock_sys::gpu::Gpus {
    fn devices(&self) -> Result<Vec<Device>, GpuError> {
        paddock_sys::gpu::Gpus::devices(self).map_err(GpuError)
    }
    fn process_memory(&self) -> Result<HashMap<i32, u64>, GpuError> {
        paddock_sys::gpu::Gpus::process_memory(self).map_err(GpuError)
    }
}

/// The variables that put a worker on `device`, with CUDA numbering the GPUs as
/// NVML does.
pub fn visible_env(device: u32, amd: bool) -> Vec<(String, String)> {
    let mut v = vec![
        (VISIBLE.to_string(), device.to_string()),
        (ORDER.0.to_string(), ORDER.1.to_string()),
    ];
    if amd {
        v.extend(
            VISIBLE_AMD
                .iter()
                .map(|k| (k.to_string(), device.to_string())),
        );
    }
    v
}

/// The device a worker was given, read back from the environment paddock set.
pub fn assigned_device(env_set: &BTreeMap<String, String>) -> Option<u32> {
    env_set.get(VISIBLE)?.parse().ok()
}

/// The GPU memory `pids` hold together.
pub fn memory_of(per_pid: &HashMap<i32, u64>, pids: &[i32]) -> u64 {
    pids.iter().filter_map(|p| per_pid.get(p)).sum()
}

/// Whether a replacement may start beside a worker holding `used` bytes on
/// `device` before the worker goes: the device must have that much free.
pub fn room_for_two(devices: &[Device], device: u32, used: u64) -> bool {
    devices
        .iter()
        .find(|d| d.index == device)
        .is_some_and(|d| d.memory_total.saturating_sub(d.memory_used) >= used)
}

/// The instance's GPUs in `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GpuStatus {
    /// Why no GPU can be seen ("no NVIDIA driver (…)"); None when NVML answered.
    pub unavailable: Option<String>,
    pub devices: Vec<DeviceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceStatus {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    /// How busy the GPU was (percent of the driver's last sample period), where
    /// it says.
    pub utilization_percent: Option<u32>,
}

impl DeviceStatus {
    /// One device on one line: "0 NAME (U of T MiB in use, P % busy)".
    pub fn summary(&self) -> String {
        format!(
            "{} {} ({} of {} MiB in use{})",
            self.index,
            self.name,
            self.memory_used_bytes >> 20,
            self.memory_total_bytes >> 20,
            self.utilization_percent
                .map(|p| format!(", {p} % busy"))
                .unwrap_or_default()
        )
    }
}

impl GpuStatus {
    pub fn read(probe: &dyn GpuProbe) -> GpuStatus {
        match probe.devices() {
            Ok(devices) => GpuStatus {
                unavailable: None,
                devices: devices
                    .into_iter()
                    .map(|d| DeviceStatus {
                        index: d.index,
                        name: d.name,
                        memory_total_bytes: d.memory_total,
                        memory_used_bytes: d.memory_used,
                        utilization_percent: d.utilization_percent,
                    })
                    .collect(),
            },
            Err(why) => GpuStatus {
                unavailable: Some(why.to_string()),
                devices: vec![],
            },
        }
    }
}

/// A stand-in for the tests: set devices and per-pid memory by hand.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::Mutex;

    pub struct FakeGpus {
        pub devices: Mutex<Result<Vec<Device>, GpuError>>,
        pub memory: Mutex<HashMap<i32, u64>>,
    }

    impl FakeGpus {
        pub fn none() -> FakeGpus {
            FakeGpus {
                devices: Mutex::new(Err("no NVIDIA driver (fake)".into())),
                memory: Mutex::new(HashMap::new()),
            }
        }
        pub fn with(devices: Vec<Device>) -> FakeGpus {
            FakeGpus {
                devices: Mutex::new(Ok(devices)),
                memory: Mutex::new(HashMap::new()),
            }
        }
    }

    impl GpuProbe for FakeGpus {
        fn devices(&self) -> Result<Vec<Device>, GpuError> {
            self.devices.lock().unwrap().clone()
        }
        fn process_memory(&self) -> Result<HashMap<i32, u64>, GpuError> {
            self.devices()?;
            Ok(self.memory.lock().unwrap().clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(index: u32, total: u64, used: u64) -> Device {
        Device {
            index,
            name: format!("GPU {index}"),
            memory_total: total,
            memory_used: used,
            utilization_percent: None,
        }
    }

    #[test]
    fn the_device_set_is_the_device_read_back() {
        let mut env: BTreeMap<String, String> = visible_env(3, true).into_iter().collect();
        assert_eq!(assigned_device(&env), Some(3));
        assert_eq!(env["HIP_VISIBLE_DEVICES"], "3");
        assert_eq!(env["ROCR_VISIBLE_DEVICES"], "3");
        env.clear();
        assert_eq!(assigned_device(&env), None);
        let nvidia: BTreeMap<String, String> = visible_env(1, false).into_iter().collect();
        assert_eq!(nvidia.len(), 2, "{nvidia:?}");
        assert_eq!(nvidia["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");
    }

    #[test]
    fn a_replacement_starts_first_only_where_the_device_has_room() {
        let gib = 1u64 << 30;
        let devices = [dev(0, 80 * gib, 70 * gib), dev(1, 80 * gib, 10 * gib)];
        assert!(!room_for_two(&devices, 0, 20 * gib));
        assert!(room_for_two(&devices, 1, 20 * gib));
        assert!(!room_for_two(&devices, 7, 1));
    }

    #[test]
    fn memory_is_summed_over_the_tree() {
        let per_pid = HashMap::from([(10, 100), (11, 50), (99, 1000)]);
        assert_eq!(memory_of(&per_pid, &[10, 11, 12]), 150);
    }

    #[test]
    fn without_a_driver_status_says_why() {
        let s = GpuStatus::read(&fake::FakeGpus::none());
        assert_eq!(s.unavailable.as_deref(), Some("no NVIDIA driver (fake)"));
        assert!(s.devices.is_empty());
        let s = GpuStatus::read(&fake::FakeGpus::with(vec![dev(0, 10, 4)]));
        assert_eq!((s.unavailable, s.devices.len()), (None, 1));
    }
}
