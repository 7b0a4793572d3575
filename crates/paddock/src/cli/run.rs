//! `paddock run`: the same daemon in the foreground (systemd `Type=notify`,
//! containers, Ctrl-C).

use crate::config::Config;
use crate::daemon::start_report::Reporter;
use crate::exit;
use crate::instance::Paths;

use super::output;

pub fn run(config: Config) -> i32 {
    // Every file and folder the daemon makes is private (0600/0700), whatever
    // the umask; workers get the umask back (paddock_sys::limits).
    paddock_sys::limits::private_umask();
    let paths = Paths::of(&config);
    if let Err(e) = paths.create() {
        output::error(&format!(
            "cannot create the state folder {}: {e}",
            paths.dir.display()
        ));
        return exit::FAILURE;
    }
    let reaper = match paddock_sys::reaper::fork_reaper(&[]) {
        Ok(r) => r,
        Err(e) => {
            output::error(&format!("cannot start the reaper: {e}"));
            return exit::FAILURE;
        }
    };
    super::daemonize::run_daemon(config, paths, reaper, Reporter::Terminal, true)
}
