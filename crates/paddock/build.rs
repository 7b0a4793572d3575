//! Build-time switch for the test suite: `PADDOCK_SKIP_POSTGRES=1` marks the
//! PostgreSQL job-store tests ignored (nextest reports them as skipped), for a
//! machine with no PostgreSQL. Without it those tests start a throwaway server.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(paddock_skip_postgres)");
    println!("cargo::rerun-if-env-changed=PADDOCK_SKIP_POSTGRES");
    if std::env::var("PADDOCK_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=paddock_skip_postgres");
    }
}
