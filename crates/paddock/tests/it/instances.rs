//! Start, status, stop; instances on different ports; concurrent starts.

use std::time::Duration;

use crate::harness::{Env, free_port, http_get, wait_until};

#[test]
fn start_status_stop() {
    let env = Env::new();
    env.config(&env.fake(
        "web",
        "--port {port}",
        "port = \"auto\"\nhealth = { http = \"/health\" }",
    ));
    let out = env.start_ok();
    assert!(out.stdout.contains("ready"), "{out:?}");
    let pid = env.daemon_pid();

    let st = env.status();
    assert_eq!(st["instance"]["pid"], pid);
    assert_eq!(st["instance"]["port"], env.port);
    assert_eq!(st["instance"]["ready"], true);
    let w = &st["services"][0]["workers"][0];
    assert_eq!(w["state"], "ready");
    assert!(w["pid"].as_i64().unwrap() > 0);
    assert_eq!(w["env_set"]["PADDOCK_SERVICE"], "web");
    assert_eq!(w["env_set"]["PADDOCK_WORKER"], "0");
    assert!(
        w["env_set"]["OMP_NUM_THREADS"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    let port = st["services"][0]["port"].as_u64().unwrap() as u16;
    assert_eq!(w["env_set"]["PORT"], port.to_string());
    // The service really serves on its port.
    assert_eq!(http_get(port, "/health").unwrap().0, 200);

    // The gateway serves the same status, and health and readiness.
    let (code, body) = env.get("/status").unwrap();
    assert_eq!(code, 200);
    let gw: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(gw["instance"]["pid"], pid);
    assert_eq!(env.get("/healthz").unwrap().0, 200);
    assert_eq!(env.get("/readyz").unwrap().0, 200);

    // Human status is a table naming the service.
    let out = env.run(&["status"]);
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains("web") && out.stdout.contains("ready"),
        "{out:?}"
    );

    // A second start says who is running.
    let again = env.run(&["start"]);
    assert_eq!(again.code, 3, "{again:?}");
    assert!(again.stderr.contains(&format!("pid {pid}")), "{again:?}");
    assert!(
        again.stderr.contains(&format!("port {}", env.port)),
        "{again:?}"
    );

    env.stop_ok();
    assert!(
        env.get("/healthz").is_none(),
        "gateway still answers after stop"
    );
    env.assert_nothing_left();

    // Not running: stop, status and logs say so with exit 4.
    assert_eq!(env.run(&["stop"]).code, 4);
    assert_eq!(env.run(&["status"]).code, 4);
    assert_eq!(env.run(&["logs"]).code, 4);
}

#[test]
fn four_instances_on_four_ports_at_once() {
    let env = Env::new();
    env.config(&env.fake("web", "--port {port}", "port = \"auto\""));
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let handles: Vec<_> = ports
        .iter()
        .map(|&p| {
            let mut cmd = env.command(&["--port", &p.to_string(), "start"]);
            std::thread::spawn(move || cmd.output().unwrap())
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        crate::harness::assert_ran(&out);
    }
    let mut pids = vec![];
    for &p in &ports {
        let lock = env.path().join(format!("state/t-{p}/lock"));
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&lock).unwrap()).unwrap();
        assert_eq!(info["port"], p);
        pids.push(info["pid"].as_i64().unwrap());
        let (code, body) = http_get(p, "/status").unwrap();
        assert_eq!(code, 200);
        let st: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(st["instance"]["port"], p);
        assert_eq!(st["instance"]["ready"], true);
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4, "four distinct daemons");
    for &p in &ports {
        let out = env
            .command(&["--port", &p.to_string(), "stop"])
            .output()
            .unwrap();
        crate::harness::assert_ran(&out);
        assert!(http_get(p, "/healthz").is_none());
    }
    env.assert_nothing_left();
}

#[test]
fn ten_concurrent_starts_make_one_daemon() {
    let env = Env::new();
    env.config(&env.fake("web", "--port {port}", "port = \"auto\""));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(10));
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let mut cmd = env.command(&["start"]);
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                cmd.output().unwrap()
            })
        })
        .collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap()).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 0).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 3).count(), 9, "{codes:?}");
    let pid = env.daemon_pid();
    for o in outs.iter().filter(|o| o.status.code() == Some(3)) {
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("already running"), "{e}");
    }
    // Exactly one live daemon session for this config.
    let tag = env.config_path().display().to_string();
    let sessions = wait_until(Duration::from_secs(5), "the losers to exit", || {
        let mut s: Vec<i32> = crate::harness::procs()
            .into_iter()
            .filter(|p| !p.zombie && p.cmdline.contains(&tag))
            .map(|p| p.sid)
            .collect();
        s.sort();
        s.dedup();
        (s.len() == 1).then_some(s)
    });
    assert_eq!(sessions, vec![pid]);
    env.stop_ok();
    env.assert_nothing_left();
}

#[test]
fn control_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.config(&env.fake("web", "--port {port}", "port = \"auto\""));
    env.start_ok();
    let sock = env.state_dir().join("ctl.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let dir_mode = std::fs::metadata(env.state_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "dir mode {dir_mode:o}");
    env.stop_ok();
}

#[test]
fn long_state_path_moves_the_socket_to_the_runtime_dir() {
    let mut env = Env::new();
    let runtime = env.path().join("rt");
    std::fs::create_dir(&runtime).unwrap();
    env.extra_env
        .push(("XDG_RUNTIME_DIR".into(), runtime.display().to_string()));
    let deep = env.path().join("a".repeat(60)).join("b".repeat(60));
    let text = format!(
        "[instance]\nname = \"t\"\nlisten = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\n\n{}",
        env.port,
        deep.display(),
        env.fake("web", "--port {port}", "port = \"auto\"")
    );
    env.raw_config(&text);
    env.start_ok();
    let socks: Vec<_> = std::fs::read_dir(runtime.join("paddock"))
        .unwrap()
        .collect();
    assert_eq!(socks.len(), 1, "one socket in the runtime dir");
    assert_eq!(env.run(&["status"]).code, 0);
    let out = env.run(&["stop"]);
    assert_eq!(out.code, 0, "{out:?}");
    env.assert_nothing_left();
}

#[test]
fn an_auth_token_guards_every_route_but_the_probes() {
    let mut env = Env::new();
    env.instance_extra = "auth_token = \"s3cret\"\n".into();
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    // Kubernetes' probes carry no token: they get the verdict, and no details.
    let (code, body) = env.get("/healthz").unwrap();
    assert_eq!(code, 200);
    assert!(!body.contains("pid"), "{body}");
    let (code, body) = env.get("/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, r#"{"ready":true}"#);
    let r = crate::harness::request(
        env.port,
        "GET",
        "/readyz",
        "Authorization: Bearer s3cret\r\n",
        b"",
    )
    .unwrap();
    assert_eq!(r.code, 200);
    let r = crate::harness::request(
        env.port,
        "GET",
        "/healthz",
        "Authorization: Bearer s3cret\r\n",
        b"",
    )
    .unwrap();
    assert!(r.text().contains("pid"), "{}", r.text());
    assert_eq!(env.get("/status").unwrap().0, 401);
    assert_eq!(env.get("/metrics").unwrap().0, 401);
    let body = br#"{"op": "echo", "n": 1}"#;
    let r = crate::harness::post(env.port, "/v1/fake", "application/json", body).unwrap();
    assert_eq!(r.code, 401);
    let r = crate::harness::post_with_headers(
        env.port,
        "/v1/fake",
        "application/json",
        "Authorization: Bearer s3cret\r\n",
        body,
    )
    .unwrap();
    assert_eq!(r.code, 200, "{}", r.text());
    let r = crate::harness::post_with_headers(
        env.port,
        "/v1/fake",
        "application/json",
        "Authorization: Bearer wrong\r\n",
        body,
    )
    .unwrap();
    assert_eq!(r.code, 401);
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for scheme in ["bearer", "BEARER"] {
        let r = crate::harness::post_with_headers(
            env.port,
            "/v1/fake",
            "application/json",
            &format!("Authorization: {scheme} s3cret\r\n"),
            body,
        )
        .unwrap();
        assert_eq!(r.code, 200, "{scheme}: {}", r.text());
    }
    env.stop_ok();
}
