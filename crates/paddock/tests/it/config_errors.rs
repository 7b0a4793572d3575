use crate::harness::Env;

fn check(text: &str) -> crate::harness::Out {
    let env = Env::new();
    env.raw_config(text);
    env.run(&["check"])
}

fn assert_located(text: &str, line: usize, key: &str, words: &str) {
    let out = check(text);
    assert_eq!(out.code, 2, "{out:?}");
    let needle = format!("paddock.toml:{line}:");
    assert!(
        out.stderr.contains(&needle),
        "expected {needle} in {:?}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("`{key}`")),
        "expected key {key} in {:?}",
        out.stderr
    );
    assert!(
        out.stderr.contains(words),
        "expected {words:?} in {:?}",
        out.stderr
    );
}

const SVC: &str = "[services.web]\nkind = \"process\"\ncommand = [\"python3\"]\nport = \"auto\"\n";

#[test]
fn a_valid_config_passes() {
    let out = check(SVC);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ok"), "{out:?}");
    // Kinds as the config spells them.
    assert!(out.stdout.contains("web (process, 1 worker"), "{out:?}");
    let env = Env::new();
    env.raw_config(SVC);
    let out = env.run(&["check", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["services"][0]["name"], "web");
}

#[test]
fn unknown_key() {
    assert_located(
        &format!("{SVC}wrokers = 2\n"),
        5,
        "services.web.wrokers",
        "unknown field",
    );
}

#[test]
fn wrong_type() {
    assert_located(
        &format!("{SVC}workers = \"two\"\n"),
        5,
        "services.web.workers",
        "invalid type",
    );
}

#[test]
fn bad_duration() {
    assert_located(
        &format!("{SVC}startup_timeout = \"soon\"\n"),
        5,
        "services.web.startup_timeout",
        "invalid duration",
    );
}

#[test]
fn invalid_service_name() {
    let out = check("[services.\"My Service\"]\ncommand = [\"x\"]\n");
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("paddock.toml:1:"), "{out:?}");
    assert!(out.stderr.contains("invalid name"), "{out:?}");
}

#[test]
fn invalid_instance_name() {
    assert_located(
        &format!("[instance]\nname = \"Demo!\"\n\n{SVC}"),
        2,
        "instance.name",
        "invalid name",
    );
}

#[test]
fn empty_command() {
    assert_located(
        "[services.web]\nkind = \"process\"\ncommand = []\nport = 1\n",
        3,
        "services.web.command",
        "empty",
    );
}

#[test]
fn two_services_on_one_port() {
    let text = "[services.a]\nkind = \"process\"\ncommand = [\"x\"]\nport = 9001\n\n[services.b]\nkind = \"process\"\ncommand = [\"y\"]\nport = 9001\n";
    assert_located(text, 9, "services.b.port", "also used by service \"a\"");
}

#[test]
fn not_toml_at_all() {
    let out = check("[services.web\ncommand = [\"x\"]\n");
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("paddock.toml:1:"), "{out:?}");
}

#[test]
fn every_command_validates_first() {
    let env = Env::new();
    env.raw_config(&format!("{SVC}wrokers = 2\n"));
    for cmd in [&["start"][..], &["run"], &["stop"], &["status"], &["logs"]] {
        let out = env.run(cmd);
        assert_eq!(out.code, 2, "{cmd:?}: {out:?}");
        assert!(out.stderr.contains("paddock.toml:5:"), "{cmd:?}: {out:?}");
    }
    assert!(env.leftovers().is_empty());
}

#[test]
fn missing_config_file() {
    let env = Env::new();
    let out = env.run(&["check"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("paddock.toml"), "{out:?}");
}

#[test]
fn numbers_that_cannot_work_are_refused_with_their_line() {
    let w = "[services.m]\ncommand = [\"python3\", \"m.py\"]\n";
    assert_located(
        &format!("{w}workers = 100000000\n"),
        3,
        "services.m.workers",
        "between 1 and 1024",
    );
    assert_located(
        &format!("{w}request_timeout = \"0s\"\n"),
        3,
        "services.m.request_timeout",
        "between 1ms and 720h",
    );
    assert_located(
        &format!("{w}workers = 2\nstartup_timeout = \"1000h\"\n"),
        4,
        "services.m.startup_timeout",
        "out of range",
    );
    assert_located(
        &format!("{w}poison_limit = 0\n"),
        3,
        "services.m.poison_limit",
        "between 1 and 100",
    );
    assert_located(
        &format!("[instance]\nlog_max_files = 0\n{w}"),
        2,
        "instance.log_max_files",
        "between 1 and 1000",
    );
    // The edges themselves are accepted.
    let out = check(&format!(
        "{w}workers = 1024\nrequest_timeout = \"1ms\"\nstable_after = \"720h\"\n"
    ));
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn a_blank_auth_token_is_refused_naming_the_key() {
    // A blank token would answer 401 to every client; on a public address the old
    // message said "set instance.auth_token" although it was set.
    for (listen, token) in [
        ("127.0.0.1:8799", "\"\""),
        ("127.0.0.1:8799", "\"   \""),
        ("0.0.0.0:8799", "\"\""),
    ] {
        let text = format!("[instance]\nlisten = \"{listen}\"\nauth_token = {token}\n{SVC}");
        assert_located(&text, 3, "instance.auth_token", "blank");
    }
    // A token with a space inside could never be sent in a bearer header.
    let text = format!("[instance]\nauth_token = \"two words\"\n{SVC}");
    assert_located(&text, 2, "instance.auth_token", "visible ASCII");
}

#[test]
fn check_refuses_a_state_dir_that_start_could_not_use() {
    let env = Env::new();
    let file = env.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    // The folder is a file; a folder under a file; a place nobody can create folders.
    for dir in [
        file.display().to_string(),
        file.join("state").display().to_string(),
        "/proc/paddock-state".to_string(),
    ] {
        let text = format!("[instance]\nname = \"t\"\nstate_dir = {dir:?}\n{SVC}");
        assert_located(&text, 3, "instance.state_dir", "cannot be used");
        if dir.starts_with(&file.display().to_string()) {
            assert_located(&text, 3, "instance.state_dir", "is a file, not a folder");
        }
        // And start, which would have failed, fails the same way before detaching.
        env.raw_config(&text);
        let out = env.run(&["start"]);
        assert_ne!(out.code, 0, "{out:?}");
        assert!(out.stderr.contains("state"), "{out:?}");
    }
    // A folder that does not exist yet, under one that can be written, is fine, and
    // check leaves nothing behind.
    let fresh = env.path().join("new").join("state");
    let text = format!(
        "[instance]\nname = \"t\"\nstate_dir = {:?}\n{SVC}",
        fresh.display().to_string()
    );
    assert_eq!(check(&text).code, 0);
    let left: Vec<_> = std::fs::read_dir(env.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !left
            .iter()
            .any(|n| n.to_string_lossy().starts_with(".paddock-check")),
        "{left:?}"
    );
}
