//! The paddock binary: a plain synchronous `main`. The CLI decides foreground or
//! daemon and forks (if at all) while single-threaded; the tokio runtime is built by
//! hand only after that (see `daemon::run`).

#![forbid(unsafe_code)]

/// mimalloc instead of glibc's malloc: the request path allocates small, short-lived
/// buffers, where glibc spent about a tenth of the daemon's user time (perf,
/// docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(paddock::cli::main());
}
