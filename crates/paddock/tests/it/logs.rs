//! `paddock logs`: captured output with service and worker prefixes; rotation.

use crate::harness::Env;

#[test]
fn logs_show_worker_output_with_prefixes() {
    let env = Env::new();
    env.config(&format!(
        "{}{}",
        env.fake("alpha", "--port {port}", "port = \"auto\"\nworkers = 2"),
        env.fake("beta", "--port {port}", "port = \"auto\"")
    ));
    env.start_ok();
    let out = env.run(&["logs", "alpha", "-n", "100"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("alpha/0 out| fake service pid"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("alpha/1 out| fake service pid"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("beta/"), "{out:?}");
    // The worker got its share of threads and its identity in the environment.
    assert!(out.stdout.contains("PADDOCK_SERVICE=alpha"), "{out:?}");
    let all = env.run(&["logs", "-n", "1000"]);
    assert!(all.stdout.contains("beta/0 out|"), "{all:?}");
    let few = env.run(&["logs", "-n", "2"]);
    assert_eq!(few.stdout.lines().count(), 2, "{few:?}");
    let unknown = env.run(&["logs", "gamma"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    env.stop_ok();
    // After a stop, the logs of the last run are still shown (exit 4: not running).
    let after = env.run(&["logs", "alpha"]);
    assert_eq!(after.code, 4);
    assert!(after.stdout.contains("alpha/0"), "{after:?}");
}

#[test]
fn logs_rotate_by_size() {
    let env = Env::new();
    let mut cfg = env.fake("chatty", "--port {port} --spam 2000", "port = \"auto\"");
    cfg = cfg.replacen("[instance]", "", 0);
    env.config(&cfg);
    let text = std::fs::read_to_string(env.config_path()).unwrap().replace(
        "[instance]\n",
        "[instance]\nlog_max_size = \"64KiB\"\nlog_max_files = 3\n",
    );
    env.raw_config(&text);
    env.start_ok();
    let logs = env.state_dir().join("logs");
    crate::harness::wait_until(std::time::Duration::from_secs(20), "rotation", || {
        logs.join("chatty.log.2").exists().then_some(())
    });
    env.stop_ok();
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["chatty.log", "chatty.log.1", "chatty.log.2"]);
    for n in &names {
        let len = std::fs::metadata(logs.join(n)).unwrap().len();
        assert!(len <= 64 * 1024, "{n} is {len} bytes");
    }
}

/// `log_format = "json"`: the daemon's log is one JSON object a line, with the
/// time, level, target, message and the event's fields, for log shippers.
#[test]
fn the_daemon_log_can_be_json_lines() {
    let mut env = Env::new();
    env.instance_extra = "log_format = \"json\"\n".into();
    env.config(&env.worker("fake", "workers = 1"));
    env.start_ok();
    env.stop_ok();
    let log = std::fs::read_to_string(env.state_dir().join("daemon.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{log}");
    for v in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v.get(key).is_some(), "no {key} in {v}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|v| v["message"].as_str().unwrap().contains("ready")),
        "{log}"
    );
    // The event's own fields are kept: a worker's name, the daemon's pid.
    assert!(lines.iter().any(|v| v.get("worker").is_some()), "{log}");
    assert!(lines.iter().any(|v| v.get("pid").is_some()), "{log}");
    // Anything else is a config error naming the key.
    let env = Env::new();
    env.raw_config("[instance]\nlog_format = \"xml\"\n[services.w]\ncommand = [\"python3\"]\n");
    let out = env.run(&["check"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("instance.log_format") && out.stderr.contains("\"json\""),
        "{out:?}"
    );
}
