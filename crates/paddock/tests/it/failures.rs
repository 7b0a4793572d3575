//! Start-up failures: each is reported with its cause and leaves nothing behind.

use std::time::Duration;

use crate::harness::{Env, alive, free_port, wait_until};

#[test]
fn a_service_that_exits_while_starting_fails_the_start_with_its_stderr() {
    let env = Env::new();
    env.config(&env.fake("web", "--exit-at-start 1", "port = \"auto\""));
    let out = env.run(&["start"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.took < Duration::from_secs(5), "took {:?}", out.took);
    assert!(out.stderr.contains("service web"), "{out:?}");
    assert!(out.stderr.contains("exited with status 1"), "{out:?}");
    assert!(
        out.stderr.contains("boom: model weights not found"),
        "{out:?}"
    );
    assert!(out.stderr.contains("Traceback"), "{out:?}");
    env.assert_nothing_left_now();
    assert_eq!(env.run(&["status"]).code, 4, "the daemon must be gone");
}

#[test]
fn exit_zero_while_starting_is_a_failure_too() {
    let env = Env::new();
    env.config(&env.fake("web", "--exit-at-start 0", "port = \"auto\""));
    let out = env.run(&["start"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("exited with status 0"), "{out:?}");
    env.assert_nothing_left_now();
}

#[test]
fn a_missing_program_fails_the_start() {
    let env = Env::new();
    env.config("[services.web]\nkind = \"process\"\ncommand = [\"/nonexistent/model-server\"]\nport = \"auto\"\n");
    let out = env.run(&["start"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("/nonexistent/model-server"), "{out:?}");
    env.assert_nothing_left_now();
}

#[test]
fn a_service_that_never_binds_times_out_with_exit_5() {
    let env = Env::new();
    env.config(&env.fake(
        "web",
        "--never-bind --child --pidfile {dir}/pids",
        "port = \"auto\"\nstartup_timeout = \"2s\"",
    ));
    let out = env.run(&["start"]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.took >= Duration::from_secs(2), "took {:?}", out.took);
    assert!(out.took < Duration::from_secs(10), "took {:?}", out.took);
    assert!(out.stderr.contains("startup_timeout (2s)"), "{out:?}");
    assert!(out.stderr.contains("the last thing it did: "), "{out:?}");
    // On a loaded machine the service may not have reached its pidfile before the
    // deadline; whatever it did start is in the daemon's session and checked below.
    for pid in crate::harness::read_pids(&env.path().join("pids")).unwrap_or_default() {
        assert!(!alive(pid), "pid {pid} survived");
    }
    env.assert_nothing_left_now();
}

#[test]
fn a_foreign_program_on_the_port_is_named_and_left_alone() {
    let env = Env::new();
    let port = free_port();
    let mut foreign = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(env.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the foreign server to listen",
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
    env.config(&env.fake("web", "--port {port}", &format!("port = {port}")));
    let out = env.run(&["start"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.took < Duration::from_secs(5), "took {:?}", out.took);
    assert!(
        out.stderr.contains(&format!("pid {}", foreign.id())),
        "{out:?}"
    );
    assert!(out.stderr.contains("http.server"), "{out:?}");
    assert!(
        alive(foreign.id() as i32),
        "paddock must not kill a process it did not start"
    );
    foreign.kill().unwrap();
    foreign.wait().unwrap();
    env.assert_nothing_left_now();
}

#[test]
fn the_gateway_port_taken_is_reported() {
    let env = Env::new();
    let _holder = std::net::TcpListener::bind(("127.0.0.1", env.port)).unwrap();
    env.config(&env.fake("web", "--port {port}", "port = \"auto\""));
    let out = env.run(&["start"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{}", env.port)),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(&format!("pid {}", std::process::id())),
        "{out:?}"
    );
    env.assert_nothing_left_now();
}
