//! `paddock start`: detach a daemon, then wait for its verdict on a pipe.
//!
//! The fork happens here, first thing after the config is validated, while this
//! process has one thread and has opened nothing but the pipe and its state folder.
//! The child becomes the daemon (session leader, stdio to its log); the parent reads
//! progress lines and one verdict from the pipe and exits with the verdict's code. A
//! daemon that dies without a verdict closes the pipe, and the parent says so: never
//! success without proof.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::control::StartEvent;
use crate::daemon::start_report::Reporter;
use crate::exit;
use crate::instance::Paths;

use super::output;

pub fn run(config: Config, json: bool) -> i32 {
    let paths = match super::daemonize::prepare(&config) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            output::error(&format!("cannot create a pipe: {e}"));
            return exit::FAILURE;
        }
    };
    match paddock_sys::detach::fork_and_setsid() {
        Err(e) => {
            output::error(&format!("cannot start the daemon: {e}"));
            exit::FAILURE
        }
        Ok(paddock_sys::detach::Side::Parent { child }) => {
            drop(writer);
            wait_for_verdict(&config, &paths, reader, child, json)
        }
        Ok(paddock_sys::detach::Side::Child) => {
            drop(reader);
            let code = become_daemon(config, paths, OwnedFd::from(writer));
            std::process::exit(code);
        }
    }
}

/// The child side: redirect stdio, fork the reaper, take the lock, run.
fn become_daemon(config: Config, paths: Paths, pipe: OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    let mut reporter = Reporter::Pipe(Some(File::from(pipe.try_clone().expect("dup of the pipe"))));
    let log = match open_daemon_log(&paths, config.instance.log_max_bytes) {
        Ok(f) => f,
        Err(e) => {
            reporter.verdict(
                exit::FAILURE,
                &format!("cannot open {}: {e}", paths.daemon_log.display()),
                None,
            );
            return exit::FAILURE;
        }
    };
    let devnull = match File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => {
            reporter.verdict(exit::FAILURE, &format!("cannot open /dev/null: {e}"), None);
            return exit::FAILURE;
        }
    };
    if let Err(e) =
        paddock_sys::detach::redirect_stdio(&OwnedFd::from(devnull), &OwnedFd::from(log))
    {
        reporter.verdict(exit::FAILURE, &e.to_string(), None);
        return exit::FAILURE;
    }
    let mut close_in_reaper = vec![pipe.as_raw_fd()];
    if let Reporter::Pipe(Some(f)) = &reporter {
        close_in_reaper.push(f.as_raw_fd());
    }
    let reaper = match paddock_sys::reaper::fork_reaper(&close_in_reaper) {
        Ok(r) => r,
        Err(e) => {
            reporter.verdict(
                exit::FAILURE,
                &format!("cannot start the reaper: {e}"),
                None,
            );
            return exit::FAILURE;
        }
    };
    drop(pipe);
    super::daemonize::run_daemon(config, paths, reaper, reporter, false)
}

fn open_daemon_log(paths: &Paths, max: u64) -> std::io::Result<File> {
    if std::fs::metadata(&paths.daemon_log)
        .map(|m| m.len() > max)
        .unwrap_or(false)
    {
        let _ = std::fs::rename(&paths.daemon_log, paths.daemon_log.with_extension("log.1"));
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.daemon_log)
}

/// The parent side: show progress, then the verdict; return its exit code.
fn wait_for_verdict(
    config: &Config,
    paths: &Paths,
    reader: std::io::PipeReader,
    child: i32,
    json: bool,
) -> i32 {
    let longest = config.longest_start();
    // The daemon enforces every startup timeout itself; this bound only protects
    // against a daemon wedged before it could report.
    let deadline = Instant::now() + longest + Duration::from_secs(30);
    let (tx, rx) = std::sync::mpsc::channel::<Option<StartEvent>>();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if let Ok(ev) = serde_json::from_str::<StartEvent>(&line)
                && tx.send(Some(ev)).is_err()
            {
                return;
            }
        }
        let _ = tx.send(None);
    });
    let live = output::stderr_is_tty() && !json;
    let bar = if live {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(100));
        b.set_message(format!("starting {} (pid {child})", config.instance.name));
        Some(b)
    } else {
        None
    };
    let started = Instant::now();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = match rx.recv_timeout(left) {
            Ok(ev) => ev,
            Err(_) => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                output::error(&format!(
                    "the daemon (pid {child}) reported nothing for {}s; see {}",
                    (longest + Duration::from_secs(30)).as_secs(),
                    paths.daemon_log.display()
                ));
                return exit::TIMED_OUT;
            }
        };
        match ev {
            Some(StartEvent::Progress { service, message }) => {
                let line = format!("{service}: {message}");
                match &bar {
                    Some(b) => {
                        b.set_message(format!("[{:.1}s] {line}", started.elapsed().as_secs_f64()))
                    }
                    None if !json => eprintln!("paddock: {line}"),
                    None => {}
                }
            }
            Some(StartEvent::Verdict {
                code,
                message,
                detail,
            }) => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                if code != exit::OK {
                    // The daemon sends a failed verdict as its last act; its exit
                    // (and so the lock's release) follows at once. "Did not start"
                    // means nothing is running when we return.
                    settle(child, paths);
                }
                if json {
                    let v = serde_json::json!({"code": code, "ok": code == 0, "message": message, "detail": detail, "pid": child});
                    println!("{v}");
                } else if code == 0 {
                    println!("{} {message}", output::green("ready:"));
                } else {
                    output::error(&message);
                    if let Some(d) = detail {
                        eprintln!("{d}");
                    }
                    if code != exit::ALREADY_RUNNING {
                        eprintln!("daemon log: {}", paths.daemon_log.display());
                    }
                }
                return code;
            }
            None => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                settle(child, paths);
                output::error(&format!(
                    "the daemon (pid {child}) exited without reporting whether it started; its log follows ({})",
                    paths.daemon_log.display()
                ));
                if let Ok(s) = std::fs::read_to_string(&paths.daemon_log) {
                    let lines: Vec<&str> = s.lines().collect();
                    for l in &lines[lines.len().saturating_sub(20)..] {
                        eprintln!("  | {l}");
                    }
                }
                return exit::FAILURE;
            }
        }
    }
}

/// Waits for the daemon process (our child) to exit after a failed verdict.
fn settle(child: i32, paths: &Paths) {
    if !paddock_sys::detach::wait_child(child, Duration::from_secs(10)) {
        output::error(&format!(
            "the daemon (pid {child}) reported a failure but has not exited after 10s; see {}",
            paths.daemon_log.display()
        ));
    }
}
