//! Build-time switches for the test suite, each marking tests ignored (nextest
//! reports them as skipped, never as passed) on a machine without what they need:
//! `PADDOCK_SKIP_POSTGRES=1` the PostgreSQL job-store tests (without it they start
//! a throwaway server), `PADDOCK_SKIP_BROWSER=1` the dashboard's browser test (it
//! drives Debian's Chromium; the macOS CI job sets it).
fn main() {
    for (var, cfg) in [
        ("PADDOCK_SKIP_POSTGRES", "paddock_skip_postgres"),
        ("PADDOCK_SKIP_BROWSER", "paddock_skip_browser"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo::rerun-if-env-changed={var}");
        if std::env::var(var).is_ok_and(|v| v == "1") {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
