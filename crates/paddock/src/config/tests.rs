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
