//! `paddock run`: the same daemon in the foreground (systemd `Type=notify`,
//! containers, Ctrl-C).

use crate::config::Config;
use crate::daemon::start_report::Reporter;
use crate::exit;

use super::output;

pub fn run(config: Config) -> i32 {
    let paths = match super::daemonize::prepare(&config) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let reaper = match paddock_sys::reaper::fork_reaper(&[]) {
        Ok(r) => r,
        Err(e) => {
            output::error(&format!("cannot start the reaper: {e}"));
            return exit::FAILURE;
        }
    };
    super::daemonize::run_daemon(config, paths, reaper, Reporter::Terminal, true)
}
