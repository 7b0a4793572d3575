//! The stand-in NVIDIA driver for the tests (CI has no GPU): fixtures/fake_nvml.c,
//! built per test with `cc` and handed to paddock through `PADDOCK_NVML_LIBRARY`,
//! so the daemon's real NVML path runs. Its state is files in the test's folder;
//! the fake worker's `vram` op and `FAKE_VRAM_MB` write them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use crate::harness::{Env, fixture};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// The stand-in driver for one test: its state folder and its library, built here.
pub struct FakeNvml {
    pub dir: PathBuf,
    /// The test's own NVML handle on the fake (nvml.rs's tests are Linux-only).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    gpus: paddock_sys::gpu::Gpus,
}

impl FakeNvml {
    /// Builds the library for `devices` (name, total bytes) and points the
    /// daemon and the CLI at it. Device N is N × 10 % busy.
    pub fn install(env: &mut Env, devices: &[(&str, u64)]) -> FakeNvml {
        let dir = env.path().join("nvml");
        std::fs::create_dir_all(&dir).unwrap();
        let lines: String = devices
            .iter()
            .enumerate()
            .map(|(i, (name, total))| format!("{name}|{total}|{}\n", i * 10))
            .collect();
        std::fs::write(dir.join("devices"), lines).unwrap();
        let lib = dir.join("libnvidia-ml.so.1");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&lib)
            .arg(format!("-DFAKE_NVML_DIR={:?}", dir.display().to_string()))
            .arg(fixture("fake_nvml.c"))
            .output()
            .expect("cc (a C compiler) builds the stand-in NVML library");
        assert!(
            out.status.success(),
            "building fake_nvml.c: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env.extra_env.push((
            paddock_sys::gpu::LIBRARY_VAR.into(),
            lib.display().to_string(),
        ));
        let gpus = paddock_sys::gpu::Gpus::load_from(lib.as_os_str());
        assert_eq!(gpus.devices().unwrap().len(), devices.len());
        FakeNvml { dir, gpus }
    }

    /// What NVML says each process holds.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub fn holders(&self) -> HashMap<i32, u64> {
        self.gpus.process_memory().unwrap()
    }

    /// A service of fake workers that hold `setup_mb` MiB each once loaded.
    pub fn service(&self, env: &Env, name: &str, setup_mb: u64, extra: &str) -> String {
        env.worker_with(
            name,
            "fake_worker.py",
            &[
                ("FAKE_NVML_DIR", &self.dir.display().to_string()),
                ("FAKE_VRAM_MB", &setup_mb.to_string()),
            ],
            extra,
        )
    }
}
