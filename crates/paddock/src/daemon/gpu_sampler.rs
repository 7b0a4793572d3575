//! One thread owns the daemon's GPU readings. NVML calls block — a millisecond on
//! a quiet driver, far more on a busy one with many processes — so nothing on the
//! runtime makes them: this thread reads the devices and each process's GPU memory
//! every `every` and publishes the reading; the workers' `max_gpu_memory` checks,
//! `status` and `/metrics` read the latest one.
//!
//! Invariants:
//! - in the daemon, after the first reading (taken as the daemon starts, before
//!   any worker), NVML is called from this thread only;
//! - a reading is at most `every` old, plus one read's time;
//! - where NVML did not load (no driver) there is no thread: that answer cannot
//!   change while the daemon runs (NVML is loaded once), so a machine without a
//!   GPU has nothing polling for one. Where it loaded, a failed reading is retried
//!   at the next tick;
//! - the thread ends when the last reader is dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::gpu::{Device, GpuError, GpuProbe};

/// One reading of the GPUs.
#[derive(Debug, Clone)]
struct Reading {
    devices: Result<Vec<Device>, GpuError>,
    memory: Result<HashMap<i32, u64>, GpuError>,
}

impl Reading {
    fn take(probe: &dyn GpuProbe) -> Reading {
        Reading {
            devices: probe.devices(),
            memory: probe.process_memory(),
        }
    }
}

/// The latest reading, as a [`GpuProbe`] that never blocks.
pub struct Sampled {
    latest: watch::Receiver<Arc<Reading>>,
}

impl GpuProbe for Sampled {
    fn devices(&self) -> Result<Vec<Device>, GpuError> {
        self.latest.borrow().devices.clone()
    }
    fn process_memory(&self) -> Result<HashMap<i32, u64>, GpuError> {
        self.latest.borrow().memory.clone()
    }
}

/// Takes a first reading now, then, where NVML loaded (`driver`), one every
/// `every` on a thread of its own.
pub fn start(probe: Box<dyn GpuProbe>, driver: bool, every: Duration) -> Sampled {
    let first = Reading::take(probe.as_ref());
    let (tx, latest) = watch::channel(Arc::new(first));
    if driver {
        let spawned = std::thread::Builder::new()
            .name("gpu-sampler".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    if tx.is_closed() {
                        return;
                    }
                    tx.send_replace(Arc::new(Reading::take(probe.as_ref())));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("GPU readings stay as first read: cannot start their thread: {e}");
        }
    }
    Sampled { latest }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fake::FakeGpus;

    fn device(used: u64) -> Device {
        Device {
            index: 0,
            name: "GPU 0".into(),
            memory_total: 100,
            memory_used: used,
            utilization_percent: None,
        }
    }

    /// Spins until `done`, for at most 5 s (the sampler ticks every few ms here).
    fn until(mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "still not so after 5 s"
            );
            std::thread::yield_now();
        }
    }

    /// A probe shared with the test, so that it can change what the driver says.
    struct Shared(Arc<FakeGpus>);

    impl GpuProbe for Shared {
        fn devices(&self) -> Result<Vec<Device>, GpuError> {
            self.0.devices()
        }
        fn process_memory(&self) -> Result<HashMap<i32, u64>, GpuError> {
            self.0.process_memory()
        }
    }

    #[test]
    fn readers_see_a_new_reading_within_one_period() {
        let fake = Arc::new(FakeGpus::with(vec![device(1)]));
        let sampled = start(
            Box::new(Shared(fake.clone())),
            true,
            Duration::from_millis(10),
        );
        assert_eq!(sampled.devices().unwrap()[0].memory_used, 1);
        *fake.devices.lock().unwrap() = Ok(vec![device(7)]);
        fake.memory.lock().unwrap().insert(42, 7);
        until(|| sampled.devices().unwrap()[0].memory_used == 7);
        // The next reading has the memory too (both come from one reading).
        until(|| sampled.process_memory().unwrap().get(&42) == Some(&7));
    }

    #[test]
    fn without_a_driver_it_reads_once_and_starts_no_thread() {
        let fake = Arc::new(FakeGpus::none());
        let sampled = start(
            Box::new(Shared(fake.clone())),
            false,
            Duration::from_millis(1),
        );
        assert_eq!(sampled.devices().unwrap_err().0, "no NVIDIA driver (fake)");
        // No thread holds the probe: it was dropped once the first reading was taken.
        assert_eq!(Arc::strong_count(&fake), 1);
    }

    #[test]
    fn a_failed_reading_where_nvml_loaded_is_retried() {
        // NVML loaded, but the first reading failed (a device query erred).
        let fake = Arc::new(FakeGpus::none());
        let sampled = start(
            Box::new(Shared(fake.clone())),
            true,
            Duration::from_millis(5),
        );
        assert!(sampled.devices().is_err());
        *fake.devices.lock().unwrap() = Ok(vec![device(3)]);
        until(|| sampled.devices().is_ok());
        assert_eq!(sampled.devices().unwrap()[0].memory_used, 3);
    }

    #[test]
    fn the_thread_ends_with_its_last_reader() {
        let fake = Arc::new(FakeGpus::with(vec![device(1)]));
        let sampled = start(
            Box::new(Shared(fake.clone())),
            true,
            Duration::from_millis(5),
        );
        assert_eq!(Arc::strong_count(&fake), 2, "the thread holds the probe");
        drop(sampled);
        until(|| Arc::strong_count(&fake) == 1);
    }
}
