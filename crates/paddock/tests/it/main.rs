//! paddock's integration tests: the real binary, fake services, bounded waits.

/// Tests written once for a `Backend`, run on SQLite and on PostgreSQL: a module
/// `sqlite` and a module `postgres`, a test in each per function named (the module
/// that uses it imports `Backend`).
macro_rules! on_both_stores {
    ($($name:ident),*) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::Backend::Sqlite) })*
        }
        mod postgres {
            $(
                #[test]
                #[cfg_attr(paddock_skip_postgres, ignore = "PADDOCK_SKIP_POSTGRES=1")]
                fn $name() { super::$name(super::Backend::postgres()) }
            )*
        }
    };
}

mod harness;

mod admin;
mod batching;
mod chaos;
mod client;
mod cluster;
mod config_errors;
mod crashloop;
mod examples;
mod failures;
mod fake_nvml;
mod foreground;
mod gpus;
mod hardening;
mod hostile_client;
mod init;
mod instances;
mod job_cancel;
mod job_stores;
mod job_timing;
mod jobs;
mod listen_fd;
mod logs;
mod long_poll;
#[cfg(target_os = "linux")]
mod nvml;
mod on_demand;
mod openapi;
mod orphans;
mod periodic;
mod pg_server;
mod reloads;
mod restarts;
mod retention;
mod sdk_versions;
mod stopping;
mod store_upgrades;
mod streaming;
mod workers;
