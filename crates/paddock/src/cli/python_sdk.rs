//! Which paddock SDK a Python interpreter imports: asked of the interpreter itself,
//! in the folder and environment its worker would run with.
//!
//! Why: the `paddock` command and the model's environment are often two different
//! installs (`pipx` or `uv tool install` put paddock in an environment of its own).
//! `init` and `doctor` ask the worker's interpreter before a worker ever starts, so a
//! missing or mismatched SDK is named with its fix instead of failing at `start`.
//! The probe only imports the package; it never runs a worker.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::sdk::{self, Fit};

/// What the probe prints: one line of JSON.
const PROBE: &str = r#"
import json, os, sys
try:
    import paddock
except Exception as e:
    print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
    sys.exit(0)
print(json.dumps({"version": getattr(paddock, "__version__", None),
                  "protocol": getattr(paddock, "PROTOCOL_VERSION", None),
                  "path": os.path.dirname(os.path.abspath(paddock.__file__)),
                  "executable": sys.executable}))
"#;

/// The SDK an interpreter imports, or why it imports none.
#[derive(Debug, Clone, Serialize)]
pub struct Probed {
    /// The interpreter asked.
    pub python: String,
    /// Whether it imported a `paddock` this daemon can serve.
    pub ok: bool,
    /// `same`, `older`, `newer`, `incompatible`, `missing` or `not_run`.
    pub fit: &'static str,
    pub version: Option<String>,
    pub protocol: Option<u16>,
    pub path: Option<String>,
    /// What went wrong, when `ok` is false.
    pub error: Option<String>,
    /// The command that installs the SDK of this release for this interpreter.
    pub install: String,
}

/// Asks `python` (run in `cwd` with `env` added to this process's environment) which
/// `paddock` it imports.
pub fn probe(python: &str, cwd: &Path, env: &BTreeMap<String, String>) -> Probed {
    let install = format!(
        "{python} -m pip install '{}=={}'",
        crate::DISTRIBUTION,
        crate::VERSION
    );
    let mut p = Probed {
        python: python.to_string(),
        ok: false,
        fit: "not_run",
        version: None,
        protocol: None,
        path: None,
        error: None,
        install,
    };
    let out = Command::new(python)
        .args(["-c", PROBE])
        .current_dir(cwd)
        .envs(env)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            p.error = Some(format!("could not run {python}: {e}"));
            return p;
        }
    };
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = match serde_json::from_str(line.trim()) {
        Ok(v) if out.status.success() => v,
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            p.error = Some(format!(
                "{python} failed ({}): {}",
                out.status,
                err.lines().last().unwrap_or("no output")
            ));
            return p;
        }
    };
    if let Some(e) = v["error"].as_str() {
        p.fit = "missing";
        p.error = Some(format!("{python} cannot import paddock ({e})"));
        return p;
    }
    p.version = v["version"].as_str().map(str::to_string);
    p.protocol = v["protocol"].as_u64().map(|n| n as u16);
    p.path = v["path"].as_str().map(str::to_string);
    let fit = sdk::fit(p.protocol.unwrap_or(0), p.version.as_deref());
    p.fit = match fit {
        Fit::Same => "same",
        Fit::Older => "older",
        Fit::Newer => "newer",
        Fit::Incompatible => "incompatible",
    };
    p.ok = fit != Fit::Incompatible;
    if !p.ok {
        p.error = Some(format!(
            "{python} imports paddock {} (protocol {}) from {}: this paddock ({}) speaks protocol {} to {}",
            p.version.as_deref().unwrap_or("of an unknown version"),
            p.protocol.unwrap_or(0),
            p.path.as_deref().unwrap_or("?"),
            crate::VERSION,
            paddock_protocol::MIN_VERSION,
            paddock_protocol::VERSION
        ));
    }
    p
}

/// Whether a worker's command runs a Python interpreter (`python`, `python3.11`,
/// `/venv/bin/python3`): only those can be asked.
pub fn is_python(program: &str) -> bool {
    let name = program.rsplit('/').next().unwrap_or(program);
    name.strip_prefix("python")
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_interpreters_are_told_from_other_programs() {
        assert!(is_python("python3"));
        assert!(is_python("/venv/bin/python3.11"));
        assert!(is_python("python"));
        assert!(!is_python("uv"));
        assert!(!is_python("/usr/bin/pythonista"));
        assert!(!is_python("gunicorn"));
    }

    #[test]
    fn an_interpreter_that_is_not_there_is_named_with_the_install_command() {
        let p = probe("/nonexistent/python3", Path::new("/"), &BTreeMap::new());
        assert!(!p.ok);
        assert_eq!(p.fit, "not_run");
        assert!(p.error.unwrap().contains("/nonexistent/python3"));
        assert!(
            p.install
                .starts_with("/nonexistent/python3 -m pip install 'paddock-serve==")
        );
    }
}
