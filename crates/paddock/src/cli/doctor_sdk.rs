//! `paddock doctor`'s SDK checks: whether each worker service's interpreter imports a
//! paddock SDK this binary can serve, and of which release.
//!
//! For a running instance, each worker's HELLO says its SDK (`status`); for a service
//! none of whose workers has said it (not running, or failed before HELLO), the
//! worker's interpreter is asked (`python_sdk::probe`), in the service's folder and
//! environment. An SDK this paddock cannot speak to is an error (its workers cannot
//! start); an older one within the protocol range works and is a warning; a missing
//! one is an error. Read-only: nothing is installed.

use std::collections::BTreeMap;

use super::findings::{Finding, Severity};
use super::python_sdk;
use crate::config::{Config, Kind};
use crate::sdk::{self, Fit};
use crate::status::Status;

pub fn examine(config: &Config, status: Option<&Status>, findings: &mut Vec<Finding>) {
    for svc in config.services.iter().filter(|s| s.kind == Kind::Worker) {
        let seen: Vec<_> = status
            .and_then(|s| s.services.iter().find(|x| x.name == svc.name.as_str()))
            .map(|x| {
                x.workers
                    .iter()
                    .filter_map(|w| w.sdk.as_ref().map(|sdk| (w.index, sdk)))
                    .collect()
            })
            .unwrap_or_default();
        if !seen.is_empty() {
            for (index, sdk) in seen {
                let subject = format!("{}/{index}", svc.name);
                let version = sdk.version.as_deref().unwrap_or("of an unknown version");
                let fix = sdk::install_command(sdk);
                let (severity, finding) = match sdk::fit(sdk.protocol, sdk.version.as_deref()) {
                    Fit::Same | Fit::Newer => continue,
                    Fit::Older => (
                        Severity::Warning,
                        format!(
                            "runs paddock SDK {version} (protocol {}) from {}: older than this paddock ({}); it works, but it lacks what came since",
                            sdk.protocol,
                            sdk.path.as_deref().unwrap_or("?"),
                            crate::VERSION
                        ),
                    ),
                    Fit::Incompatible => (Severity::Error, sdk::incompatible(sdk)),
                };
                findings.push(Finding {
                    severity,
                    subject,
                    finding,
                    fix,
                });
            }
            continue;
        }
        let Some(program) = svc.command.first() else {
            continue;
        };
        if !python_sdk::is_python(program) {
            continue;
        }
        let env: BTreeMap<String, String> = svc.env.clone();
        let p = python_sdk::probe(program, &svc.cwd, &env);
        let subject = format!("service {}", svc.name);
        let (severity, finding) = match (p.ok, p.fit) {
            (true, "same" | "newer") => continue,
            (true, _) => (
                Severity::Warning,
                format!(
                    "its interpreter ({program}) imports paddock SDK {} from {}: older than this paddock ({}); it works, but it lacks what came since",
                    p.version.as_deref().unwrap_or("?"),
                    p.path.as_deref().unwrap_or("?"),
                    crate::VERSION
                ),
            ),
            (false, _) => (
                Severity::Error,
                format!(
                    "{}: its workers cannot start",
                    p.error.as_deref().unwrap_or("the SDK could not be checked")
                ),
            ),
        };
        findings.push(Finding {
            severity,
            subject,
            finding,
            fix: p.install,
        });
    }
}
