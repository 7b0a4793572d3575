//! No orphans: a SIGKILLed daemon takes its workers and their children with it.

use std::time::{Duration, Instant};

use crate::harness::{Env, alive, kill, read_pids, wait_until};

#[test]
fn sigkill_of_the_daemon_leaves_no_worker_or_child_and_start_works_again() {
    let env = Env::new();
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
