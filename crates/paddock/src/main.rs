//! The paddock binary: a plain synchronous `main`. The CLI decides foreground or
//! daemon and forks (if at all) while single-threaded; the tokio runtime is built by
//! hand only after that (see `daemon::run`).

#![forbid(unsafe_code)]

fn main() {
    std::process::exit(paddock::cli::main());
}
