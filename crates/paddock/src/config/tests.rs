//! Unit tests of parsing and validation.

use super::*;
use std::time::Duration;

fn err(text: &str) -> (usize, usize, String, String) {
    match parse(Path::new("/x/p.toml"), text, None) {
        Err(ConfigError::Invalid {
            line,
            column,
            key,
            message,
            ..
        }) => (line, column, key, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

const OK: &str = "[services.web]\nkind = \"process\"\ncommand = [\"x\"]\nport = \"auto\"\n";

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(Path::new("/srv/My App/paddock.toml"), OK, None).unwrap();
    assert_eq!(c.instance.name.as_str(), "my-app");
    assert_eq!(c.instance.listen.port(), 8700);
    let s = &c.services[0];
    assert_eq!(s.health, Some(Health::Tcp));
    assert_eq!(s.restart.stop_timeout, Duration::from_secs(10));
    assert_eq!(s.cwd, PathBuf::from("/srv/My App"));
}

#[test]
fn port_override_selects_another_instance() {
    let c = parse(Path::new("/x/p.toml"), OK, Some(9100)).unwrap();
    assert_eq!(c.instance.listen.port(), 9100);
}

#[test]
fn unknown_key_names_line_and_key() {
    let (line, col, key, msg) = err(&format!("{OK}wrokers = 2\n"));
    assert_eq!((line, col), (5, 1));
    assert_eq!(key, "services.web.wrokers");
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn wrong_type_names_key() {
    let (line, _, key, _) = err(
        "[services.web]\nkind = \"process\"\ncommand = [\"x\"]\nport = \"auto\"\nworkers = \"two\"\n",
    );
    assert_eq!(line, 5);
    assert_eq!(key, "services.web.workers");
}

#[test]
fn bad_duration_is_located() {
    let (line, col, key, msg) = err(&format!("{OK}stop_timeout = \"10 parsecs\"\n"));
    assert_eq!((line, col), (5, 16));
    assert_eq!(key, "services.web.stop_timeout");
    assert!(msg.contains("invalid duration"), "{msg}");
}

#[test]
fn invalid_service_name() {
    let (line, _, _, msg) =
        err("[services.Web]\nkind = \"process\"\ncommand = [\"x\"]\nport = 1\n");
    assert_eq!(line, 1);
    assert!(msg.contains("invalid name"), "{msg}");
}

#[test]
fn empty_command() {
    let (line, _, key, msg) = err("[services.web]\nkind = \"process\"\ncommand = []\nport = 1\n");
    assert_eq!(line, 3);
    assert_eq!(key, "services.web.command");
    assert!(msg.contains("empty"), "{msg}");
}

#[test]
fn two_services_one_port() {
    let (line, _, key, msg) = err(
        "[services.a]\nkind = \"process\"\ncommand = [\"x\"]\nport = 9000\n\n[services.b]\nkind = \"process\"\ncommand = [\"y\"]\nport = 9000\n",
    );
    assert_eq!(line, 9);
    assert_eq!(key, "services.b.port");
    assert!(msg.contains("also used by service \"a\""), "{msg}");
}

#[test]
fn invalid_health_in_inline_table() {
    let (line, _, key, _) = err(&format!("{OK}health = {{ http = 5 }}\n"));
    assert_eq!(line, 5);
    assert!(key.starts_with("services.web.health"), "{key}");
}

#[test]
fn public_listen_needs_token() {
    let (line, _, key, _) = err(&format!("[instance]\nlisten = \"0.0.0.0:8700\"\n{OK}"));
    assert_eq!(line, 2);
    assert_eq!(key, "instance.listen");
}

#[test]
fn worker_services_take_no_probe() {
    let (line, _, key, _) = err("[services.w]\ncommand = [\"x\"]\nhealth = { tcp = true }\n");
    assert_eq!(line, 3);
    assert_eq!(key, "services.w.health");
}

#[test]
fn invalid_instance_name() {
    let (line, _, key, _) = err(&format!("[instance]\nname = \"a b\"\n{OK}"));
    assert_eq!(line, 2);
    assert_eq!(key, "instance.name");
}

const WORKER: &str = "[services.m]\ncommand = [\"x\"]\n";

#[test]
fn workers_is_a_fixed_number_and_a_range_is_min_and_max() {
    let c = parse(
        Path::new("/x/p.toml"),
        &format!("{WORKER}workers = 3\n"),
        None,
    )
    .unwrap();
    let s = &c.services[0];
    assert_eq!((s.scaling.min_workers, s.workers), (3, 3));
    assert!(!s.elastic());
    assert_eq!(s.scaling.idle_timeout, None);
    let text = format!("{WORKER}min_workers = 0\nmax_workers = 4\n");
    let c = parse(Path::new("/x/p.toml"), &text, None).unwrap();
    let s = &c.services[0];
    assert_eq!((s.scaling.min_workers, s.workers), (0, 4));
    assert!(s.elastic());
    assert_eq!(s.scaling.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(s.scaling.target_queue, 1.0);
    assert_eq!(s.scaling.scale_up_after, Duration::from_secs(1));
    // min_workers = 0 alone: up to one worker; max_workers alone: from one.
    let c = parse(
        Path::new("/x/p.toml"),
        &format!("{WORKER}min_workers = 0\n"),
        None,
    )
    .unwrap();
    assert_eq!(
        (c.services[0].scaling.min_workers, c.services[0].workers),
        (0, 1)
    );
    let c = parse(
        Path::new("/x/p.toml"),
        &format!("{WORKER}max_workers = 3\nmemory_estimate = \"2GiB\"\n"),
        None,
    )
    .unwrap();
    assert_eq!(
        (c.services[0].scaling.min_workers, c.services[0].workers),
        (1, 3)
    );
    assert_eq!(c.services[0].scaling.memory_estimate, 2 << 30);
    // The start's bound counts each proof.
    let text = format!(
        "{WORKER}min_workers = 0\nstartup_timeout = \"20s\"\n[services.n]\ncommand = [\"x\"]\nstartup_timeout = \"30s\"\n"
    );
    let c = parse(Path::new("/x/p.toml"), &text, None).unwrap();
    assert_eq!(c.longest_start(), Duration::from_secs(50));
}

#[test]
fn workers_with_min_or_max_workers_is_an_error_naming_both() {
    let (line, _, key, msg) = err(&format!("{WORKER}workers = 2\nmax_workers = 4\n"));
    assert_eq!(line, 4);
    assert_eq!(key, "services.m.max_workers");
    assert!(
        msg.contains("`workers` and `max_workers` are both set"),
        "{msg}"
    );
    let (_, _, key, msg) = err(&format!("{WORKER}min_workers = 0\nworkers = 2\n"));
    assert_eq!(key, "services.m.min_workers");
    assert!(msg.contains("`workers` and `min_workers`"), "{msg}");
}

#[test]
fn scaling_settings_that_cannot_work_are_refused() {
    let (_, _, key, msg) = err(&format!("{WORKER}min_workers = 3\nmax_workers = 2\n"));
    assert_eq!(key, "services.m.min_workers");
    assert!(msg.contains("above max_workers"), "{msg}");
    let (_, _, key, msg) = err(&format!("{WORKER}workers = 2\nidle_timeout = \"5m\"\n"));
    assert_eq!(key, "services.m.idle_timeout");
    assert!(msg.contains("none is ever unloaded"), "{msg}");
    let (_, _, key, _) = err(&format!("{WORKER}max_workers = 2\ntarget_queue = 0.0\n"));
    assert_eq!(key, "services.m.target_queue");
    let (_, _, key, msg) = err(&format!("{OK}min_workers = 0\n"));
    assert_eq!(key, "services.web.min_workers");
    assert!(msg.contains("process service keeps `workers`"), "{msg}");
    let (_, _, key, msg) = err(&format!("[instance]\nmemory_budget = \"1KiB\"\n{WORKER}"));
    assert_eq!(key, "instance.memory_budget");
    assert!(msg.contains("at least 1MiB"), "{msg}");
    let c = parse(
        Path::new("/x/p.toml"),
        &format!("[instance]\nmemory_budget = \"12GiB\"\n{WORKER}"),
        None,
    )
    .unwrap();
    assert_eq!(c.instance.memory_budget, 12 << 30);
}
