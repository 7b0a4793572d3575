//! No orphans: a SIGKILLed daemon takes its workers and their children with it —
//! with Linux's `PR_SET_PDEATHSIG` and without it (`PADDOCK_TEST_NO_PDEATHSIG=1`,
//! the reaper alone, as on macOS), including a daemon killed between a worker's fork
//! and the moment it told the reaper about the worker's group.

use std::time::{Duration, Instant};

use crate::harness::{Env, alive, kill, read_pids, wait_until};

/// Linux's parent-death signal and the reaper, or the reaper alone.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Both,
    ReaperOnly,
}

fn env_in(mode: Mode) -> Env {
    let mut env = Env::new();
    if let Mode::ReaperOnly = mode {
        env.extra_env
            .push(("PADDOCK_TEST_NO_PDEATHSIG".into(), "1".into()));
    }
    env
}

#[test]
fn sigkill_of_the_daemon_leaves_no_worker_or_child_and_start_works_again() {
    sigkill_leaves_nothing(Mode::Both);
}

#[test]
fn without_pdeathsig_sigkill_of_the_daemon_leaves_no_worker_or_child() {
    sigkill_leaves_nothing(Mode::ReaperOnly);
}

/// The window the reaper alone used to leave open: the daemon forked a worker and
/// died before it told the reaper about the worker's group. The worker announced
/// its group itself, before exec, so it and its child still die with the daemon.
#[test]
fn a_daemon_killed_between_a_fork_and_telling_the_reaper_leaves_no_worker() {
    let mut env = env_in(Mode::ReaperOnly);
    let forked = env.path().join("forked");
    env.extra_env.push((
        "PADDOCK_TEST_HANG_AFTER_SPAWN".into(),
        forked.display().to_string(),
    ));
    env.config(&env.fake(
        "web",
        "--port {port} --child --pidfile {dir}/pids",
        "port = \"auto\"\nstartup_timeout = \"60s\"",
    ));
    // `start` waits for a readiness that never comes: run it in the background.
    let mut start = env.command(&["start"]);
    start
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut start = start.spawn().unwrap();
    let pid: i32 = wait_until(Duration::from_secs(30), "the worker forked", || {
        std::fs::read_to_string(&forked).ok()?.trim().parse().ok()
    });
    // The worker runs its program and has started its own child.
    let pids = wait_until(Duration::from_secs(30), "the worker and its child", || {
        read_pids(&env.path().join("pids")).filter(|p| p.len() == 2)
    });
    assert_eq!(pids[0], pid, "the pidfile's first pid is the worker's");
    let daemon = wait_until(Duration::from_secs(10), "the daemon's lock", || {
        Some(env.lock_info()?["pid"].as_i64()? as i32)
    });
    kill(daemon, 9);
    let t = Instant::now();
    wait_until(
        Duration::from_secs(2),
        "the worker and its child to die with the daemon",
        || pids.iter().all(|&p| !alive(p)).then_some(()),
    );
    eprintln!("all gone {:?} after the SIGKILL", t.elapsed());
    wait_until(Duration::from_secs(30), "paddock start to give up", || {
        start.try_wait().unwrap()
    });
}

fn sigkill_leaves_nothing(mode: Mode) {
    let env = env_in(mode);
    let svc = |n: u32| {
        env.fake(
            &format!("w{n}"),
            &format!("--port {{port}} --child --pidfile {{dir}}/pids{n}"),
            "port = \"auto\"",
        )
    };
    env.config(&format!("{}{}", svc(0), svc(1)));
    env.start_ok();
    let daemon = env.daemon_pid();
    let mut pids = vec![];
    for n in 0..2 {
        let p = read_pids(&env.path().join(format!("pids{n}"))).unwrap();
        assert_eq!(p.len(), 2, "worker and child pids");
        pids.extend(p);
    }
    for &p in &pids {
        assert!(alive(p));
    }
    kill(daemon, 9);
    let t = Instant::now();
    wait_until(
        Duration::from_secs(2),
        "workers and children to die",
        || pids.iter().all(|&p| !alive(p)).then_some(()),
    );
    eprintln!("all gone {:?} after the SIGKILL", t.elapsed());

    // The next start needs no manual cleanup.
    std::fs::remove_file(env.path().join("pids0")).unwrap();
    env.start_ok();
    assert_ne!(env.daemon_pid(), daemon);
    let st = env.status();
    assert_eq!(st["instance"]["ready"], true);
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn stop_kills_the_whole_process_group() {
    let env = Env::new();
    env.config(&env.fake(
        "web",
        "--port {port} --child --pidfile {dir}/pids",
        "port = \"auto\"",
    ));
    env.start_ok();
    let pids = read_pids(&env.path().join("pids")).unwrap();
    env.stop_ok();
    for p in pids {
        assert!(!alive(p), "pid {p} outlived stop");
    }
    env.assert_nothing_left();
}

#[test]
fn a_worker_ignoring_sigterm_is_killed_after_stop_timeout() {
    let env = Env::new();
    // Ready only once SIGTERM is ignored (the probe checks the file it writes).
    let up = env.path().join("up");
    let svc = format!(
        "[services.stubborn]\nkind = \"process\"\ncommand = [\"python3\", \"-c\", \"import signal, sys, time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\nopen(sys.argv[1], 'w').close()\\nwhile True: time.sleep(1)\", \"{up}\"]\nhealth = {{ exec = [\"test\", \"-f\", \"{up}\"] }}\nstop_timeout = \"1s\"\n",
        up = up.display()
    );
    env.config(&svc);
    env.start_ok();
    let pid = env.status()["services"][0]["workers"][0]["pid"]
        .as_i64()
        .unwrap() as i32;
    let out = env.stop_ok();
    assert!(
        out.took >= Duration::from_secs(1),
        "stop took {:?}",
        out.took
    );
    assert!(
        out.took < Duration::from_secs(6),
        "stop took {:?}",
        out.took
    );
    assert!(!alive(pid));
    env.assert_nothing_left();
}
