//! What `paddock doctor` reports, shared by its checks (`doctor.rs`,
//! `doctor_gpu.rs`): a finding with its severity and fix, and each worker's row.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// What it is about: `instance`, `state folder`, or `SERVICE/N (pid P)`.
    pub subject: String,
    pub finding: String,
    pub fix: String,
}

#[derive(Debug, Default, Serialize)]
pub struct WorkerReport {
    pub service: String,
    pub index: u32,
    pub pid: i32,
    /// OS threads of the worker's processes together.
    pub threads: usize,
    /// OpenMP runtimes mapped, by file (each process's, all distinct).
    pub openmp: Vec<String>,
    /// BLAS libraries mapped, by file.
    pub blas: Vec<String>,
    /// OMP_NUM_THREADS as the worker has it.
    pub omp_num_threads: Option<usize>,
    /// CUDA_VISIBLE_DEVICES as the worker has it.
    pub cuda_visible_devices: Option<String>,
    /// The GPU paddock assigned it (`devices`).
    pub device: Option<u32>,
    /// GPU memory its processes hold (NVML).
    pub gpu_memory_bytes: Option<u64>,
}
