//! `paddock run`: the daemon in the foreground, stopped by SIGTERM or SIGINT, and
//! telling systemd when it is ready.

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{Env, alive, kill, wait_until};

fn run_until_signal(sig: i32) {
    let env = Env::new();
    env.config(&env.fake(
        "web",
        "--port {port} --child --pidfile {dir}/pids",
        "port = \"auto\"",
    ));
    let notify_path = env.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut cmd = env.command(&["run"]);
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();

    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 from the daemon");
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(env.get("/readyz").unwrap().0, 200, "ready means answering");
    let pids = crate::harness::read_pids(&env.path().join("pids")).unwrap();

    kill(child.id() as i32, sig);
    let status = wait_until(Duration::from_secs(15), "the daemon to exit", || {
        child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "graceful stop exits 0");
    for p in pids {
        assert!(!alive(p), "pid {p} outlived the daemon");
    }
    assert_eq!(env.run(&["status"]).code, 4);
    env.assert_nothing_left();
}

#[test]
fn run_stops_gracefully_on_sigterm() {
    run_until_signal(15);
}

#[test]
fn run_stops_gracefully_on_sigint() {
    run_until_signal(2);
}

#[test]
fn run_refuses_a_second_instance() {
    let env = Env::new();
    env.config(&env.fake("web", "--port {port}", "port = \"auto\""));
    env.start_ok();
    let out = env.run(&["run"]);
    assert_eq!(out.code, 3, "{out:?}");
    env.stop_ok();
}

#[test]
fn run_says_each_thing_once() {
    let env = Env::new();
    env.config(&env.worker_with(
        "fake",
        "fake_worker.py",
        &[("FAKE_SETUP_FAIL", "1")],
        "workers = 1",
    ));
    let out = env.run(&["run"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stderr.matches("spawned").count(), 1, "{}", out.stderr);
    assert_eq!(
        out.stderr.matches("start failed").count(),
        1,
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.matches("Traceback").count(), 1, "{}", out.stderr);
    env.assert_nothing_left_now();
}
