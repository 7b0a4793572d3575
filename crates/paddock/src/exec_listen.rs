//! The step between paddock and a `listen_fd` process service's program.
//!
//! Why: systemd's socket-activation convention (which gunicorn reads) wants
//! `LISTEN_PID` to be the program's own pid, known only after the fork — and
//! nothing that allocates (such as setting a variable) may run between fork and
//! exec in the multi-threaded daemon. So the daemon execs `paddock __exec-listen
//! PROGRAM ARGS…`; this fresh, single-threaded process sets `LISTEN_PID` to its pid
//! and execs the program, which keeps that pid.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

/// The hidden first argument that selects this step.
pub const ARG: &str = "__exec-listen";

/// Execs `argv` with `LISTEN_PID` set to this process's pid; returns only on error.
pub fn run(argv: &[OsString]) -> i32 {
    let Some((program, args)) = argv.split_first() else {
        eprintln!("paddock {ARG}: no program given");
        return crate::exit::USAGE;
    };
    let err = std::process::Command::new(program)
        .args(args)
        .env("LISTEN_PID", std::process::id().to_string())
        .exec();
    eprintln!("paddock: cannot run {program:?}: {err}");
    127
}
