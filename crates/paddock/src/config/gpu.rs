//! A service's GPUs: `devices` (`"auto"`, a list of indices, or `"none"`),
//! `workers_per_device` and `max_gpu_memory`, and the placement they make.
//!
//! Invariants:
//! - a worker's device follows from its index alone (`Gpu::assign`), so a worker
//!   restarted or recycled keeps its device, on every start path;
//! - an explicit list must hold every worker: `workers` defaults to the list's
//!   length × `workers_per_device`, and more workers than that is a config error.

use serde::Deserialize;

use super::values::Bytes;

/// `devices` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawDevices {
    Word(String),
    List(Vec<u32>),
}

/// Which GPUs a service's workers run on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Devices {
    /// No assignment: workers see whatever the environment gives them.
    #[default]
    None,
    /// Every GPU the driver reports when the daemon starts.
    Auto,
    /// These device indices, in this order.
    List(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Gpu {
    pub devices: Devices,
    /// Workers placed on one device before the next is used.
    pub per_device: u32,
    /// A worker whose GPU memory passes this is recycled (0: never).
    pub max_memory: u64,
}

impl Gpu {
    /// Each worker's device, by index: `per_device` workers on the first device,
    /// then the next. `discovered`: what the driver reports (for `"auto"`), which
    /// the workers share round-robin when there are more of them than places.
    pub fn assign(&self, discovered: &[u32], workers: u32) -> Vec<Option<u32>> {
        let list: &[u32] = match &self.devices {
            Devices::None => &[],
            Devices::Auto => discovered,
            Devices::List(l) => l,
        };
        (0..workers)
            .map(|i| {
                if list.is_empty() {
                    return None;
                }
                let slot = (i / self.per_device.max(1)) as usize % list.len();
                Some(list[slot])
            })
            .collect()
    }
}

/// Parses the three keys; returns the GPU settings and the default for `workers`
/// an explicit list implies. Errors name their key.
pub(super) fn parse(
    devices: Option<RawDevices>,
    per_device: Option<u32>,
    max_memory: Option<Bytes>,
    workers: Option<u32>,
) -> Result<(Gpu, Option<u64>), (&'static str, String)> {
    let per_device = per_device.unwrap_or(1);
    if !(1..=64).contains(&per_device) {
        return Err((
            "workers_per_device",
            format!("{per_device} is out of range: write between 1 and 64"),
        ));
    }
    let devices = match devices {
        None => Devices::None,
        Some(RawDevices::Word(w)) if w == "none" => Devices::None,
        Some(RawDevices::Word(w)) if w == "auto" => Devices::Auto,
        Some(RawDevices::Word(w)) => {
            return Err((
                "devices",
                format!(
                    "{w:?}: write \"auto\", \"none\" or a list of device indices such as [0, 1]"
                ),
            ));
        }
        Some(RawDevices::List(l)) => {
            if l.is_empty() {
                return Err(("devices", "an empty list: write \"none\" for no GPU".into()));
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(d) = l.iter().find(|d| !seen.insert(**d)) {
                return Err(("devices", format!("device {d} is listed twice")));
            }
            Devices::List(l)
        }
    };
    let mut default_workers = None;
    if let Devices::List(l) = &devices {
        let places = l.len() as u64 * u64::from(per_device);
        if let Some(w) = workers
            && u64::from(w) > places
        {
            return Err((
                "workers",
                format!(
                    "{w} workers do not fit on {} device(s) × {per_device} per device; raise workers_per_device or list more devices",
                    l.len()
                ),
            ));
        }
        default_workers = Some(places);
    }
    if devices == Devices::None && max_memory.is_some() {
        return Err((
            "max_gpu_memory",
            "needs `devices` (\"auto\" or a list): paddock measures GPU memory per device".into(),
        ));
    }
    Ok((
        Gpu {
            devices,
            per_device,
            max_memory: max_memory.map_or(0, |b| b.0),
        },
        default_workers,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(l: &[u32], per: u32) -> Gpu {
        Gpu {
            devices: Devices::List(l.to_vec()),
            per_device: per,
            max_memory: 0,
        }
    }

    #[test]
    fn workers_fill_one_device_then_the_next() {
        assert_eq!(
            list(&[2, 5], 2).assign(&[], 4),
            vec![Some(2), Some(2), Some(5), Some(5)]
        );
        assert_eq!(list(&[0], 4).assign(&[], 4), vec![Some(0); 4]);
        let auto = Gpu {
            devices: Devices::Auto,
            per_device: 1,
            max_memory: 0,
        };
        assert_eq!(auto.assign(&[0, 1], 3), vec![Some(0), Some(1), Some(0)]);
        // No GPU found: no assignment, not a failure.
        assert_eq!(auto.assign(&[], 2), vec![None, None]);
        assert_eq!(Gpu::default().assign(&[0, 1], 2), vec![None, None]);
    }

    #[test]
    fn a_list_sets_the_default_worker_count_and_bounds_it() {
        let l = || Some(RawDevices::List(vec![0, 1]));
        assert_eq!(parse(l(), Some(2), None, None).unwrap().1, Some(4));
        assert_eq!(parse(l(), None, None, Some(2)).unwrap().1, Some(2));
        let (key, e) = parse(l(), None, None, Some(3)).unwrap_err();
        assert_eq!(key, "workers");
        assert!(e.contains("do not fit on 2 device(s)"), "{e}");
        assert_eq!(
            parse(Some(RawDevices::List(vec![1, 1])), None, None, None)
                .unwrap_err()
                .0,
            "devices"
        );
        assert_eq!(
            parse(Some(RawDevices::Word("gpu".into())), None, None, None)
                .unwrap_err()
                .0,
            "devices"
        );
        assert_eq!(
            parse(None, None, Some(Bytes(1 << 30)), None).unwrap_err().0,
            "max_gpu_memory"
        );
        assert_eq!(
            parse(None, Some(0), None, None).unwrap_err().0,
            "workers_per_device"
        );
    }
}
