//! What a worker's HELLO says about its SDK, and what to tell the operator when that
//! SDK speaks a protocol version this daemon does not.
//!
//! Why: the daemon and the SDK ship together (one wheel, one version), but a model's
//! environment can hold an older or newer SDK than the `paddock` on PATH. No restart
//! can change the SDK a worker imports, so a version outside the daemon's range fails
//! the service at once, and the message names both versions and the command that
//! installs the matching SDK in that worker's own interpreter (docs/protocol.md,
//! "HELLO's metadata"). Pure functions: no I/O, unit-tested.

use paddock_protocol::{MIN_VERSION, VERSION};

use crate::status::WorkerSdk;

/// The SDK a worker described in HELLO (`version`, then the JSON metadata, whose
/// keys are all optional: a worker in another language may send none of them).
pub(crate) fn from_hello(version: u16, meta: &str) -> WorkerSdk {
    let v: serde_json::Value = serde_json::from_str(meta).unwrap_or_default();
    let text = |key: &str| v[key].as_str().map(str::to_string);
    WorkerSdk {
        protocol: version,
        language: text("sdk"),
        version: text("sdk_version"),
        path: text("sdk_path"),
        python: text("python"),
        executable: text("executable"),
    }
}

/// Whether this daemon speaks the protocol version a worker said.
pub(crate) fn supported(version: u16) -> bool {
    (MIN_VERSION..=VERSION).contains(&version)
}

/// The command that installs the SDK of this daemon's release for `sdk`'s
/// interpreter (or in words, for a worker that did not say which one it is).
pub(crate) fn install_command(sdk: &WorkerSdk) -> String {
    let pin = format!("'{}=={}'", crate::DISTRIBUTION, crate::VERSION);
    match &sdk.executable {
        Some(exe) => format!("{exe} -m pip install {pin}"),
        None => format!("pip install {pin} in the worker's environment"),
    }
}

/// Why the worker cannot be served, and the fix.
pub(crate) fn incompatible(sdk: &WorkerSdk) -> String {
    let mut who = format!("speaks worker protocol version {}", sdk.protocol);
    match (&sdk.version, &sdk.path) {
        (Some(v), Some(p)) => who.push_str(&format!(" (paddock SDK {v} at {p})")),
        (Some(v), None) => who.push_str(&format!(" (paddock SDK {v})")),
        _ => {}
    }
    let newer = if sdk.protocol > VERSION {
        "newer"
    } else {
        "older"
    };
    format!(
        "its SDK {who}; this daemon (paddock {}) speaks versions {MIN_VERSION} to {VERSION}: \
         the SDK is {newer} than the daemon, and no restart can change that. \
         Install the SDK of this release for the worker's interpreter: {} \
         (then start again, or `paddock reload` a running instance)",
        crate::VERSION,
        install_command(sdk)
    )
}

/// How an SDK's version meets this daemon's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// The same release.
    Same,
    /// An older release the daemon still speaks to: it works, `doctor` warns.
    Older,
    /// A newer release that speaks a version the daemon knows.
    Newer,
    /// A protocol version outside the daemon's range: its workers cannot start.
    Incompatible,
}

/// How an SDK of `version` speaking `protocol` fits this daemon.
pub(crate) fn fit(protocol: u16, version: Option<&str>) -> Fit {
    if !supported(protocol) {
        return Fit::Incompatible;
    }
    match version.map(|v| compare_versions(v, crate::VERSION)) {
        Some(std::cmp::Ordering::Less) => Fit::Older,
        Some(std::cmp::Ordering::Greater) => Fit::Newer,
        // An SDK that does not say its version but speaks the protocol works.
        Some(std::cmp::Ordering::Equal) | None => Fit::Same,
    }
}

/// Compares two release numbers ("0.1.0", "0.10.2", "1.0.0rc1") part by part,
/// numerically where both parts are numbers.
pub(crate) fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<(u64, String)> {
        s.split(['.', '-', '+'])
            .map(|p| {
                let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
                (digits.parse().unwrap_or(0), p[digits.len()..].to_string())
            })
            .collect()
    };
    let (a, b) = (parts(a), parts(b));
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).cloned().unwrap_or_default();
        let y = b.get(i).cloned().unwrap_or_default();
        // A pre-release ("0rc1") comes before the release ("0").
        let order =
            x.0.cmp(&y.0)
                .then_with(|| match (x.1.is_empty(), y.1.is_empty()) {
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ => x.1.cmp(&y.1),
                });
        if order.is_ne() {
            return order;
        }
    }
    std::cmp::Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One name and one version everywhere: the wheel's metadata takes its version
    /// from the workspace (dynamic), its name is [`crate::DISTRIBUTION`], and the SDK
    /// looks for its dist-info under the same name.
    #[test]
    fn the_wheel_and_the_sdk_name_the_distribution_this_binary_names() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap();
        let pyproject: toml::Table = read("pyproject.toml").parse().unwrap();
        let project = &pyproject["project"];
        assert_eq!(project["name"].as_str(), Some(crate::DISTRIBUTION));
        assert!(
            project.get("version").is_none(),
            "the version is the workspace's"
        );
        assert_eq!(
            project["dynamic"].as_array().unwrap()[0].as_str(),
            Some("version")
        );
        let maturin = &pyproject["tool"]["maturin"];
        assert_eq!(maturin["bindings"].as_str(), Some("bin"));
        assert_eq!(maturin["python-source"].as_str(), Some("sdk/python"));
        let sdk = read("sdk/python/paddock/_version.py");
        assert!(
            sdk.contains(&format!("\nDISTRIBUTION = \"{}\"", crate::DISTRIBUTION)),
            "sdk/python/paddock/_version.py should name {}",
            crate::DISTRIBUTION
        );
    }

    #[test]
    fn versions_compare_part_by_part_and_fit_the_daemon() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("0.10.0", "0.9.9"), Greater);
        assert_eq!(compare_versions("0.1.0", "0.1.0"), Equal);
        assert_eq!(compare_versions("0.1", "0.1.0"), Equal);
        assert_eq!(compare_versions("1.0.0rc1", "1.0.0"), Less);
        assert_eq!(fit(VERSION, Some(crate::VERSION)), Fit::Same);
        assert_eq!(fit(VERSION, Some("0.0.1")), Fit::Older);
        assert_eq!(fit(VERSION, Some("999.0.0")), Fit::Newer);
        assert_eq!(fit(VERSION + 1, Some(crate::VERSION)), Fit::Incompatible);
        assert_eq!(fit(MIN_VERSION, None), Fit::Same);
    }

    #[test]
    fn hello_metadata_is_read_key_by_key_and_anything_missing_is_none() {
        let sdk = from_hello(
            6,
            r#"{"sdk":"python","sdk_version":"0.1.0","sdk_path":"/v/paddock","python":"3.11.7","executable":"/v/bin/python3","later":1}"#,
        );
        assert_eq!(sdk.protocol, 6);
        assert_eq!(sdk.version.as_deref(), Some("0.1.0"));
        assert_eq!(sdk.path.as_deref(), Some("/v/paddock"));
        assert_eq!(sdk.executable.as_deref(), Some("/v/bin/python3"));
        let bare = from_hello(2, "not json");
        assert_eq!(
            (bare.protocol, bare.version, bare.executable),
            (2, None, None)
        );
    }

    #[test]
    fn the_range_is_min_to_version() {
        assert!(supported(MIN_VERSION) && supported(VERSION));
        assert!(!supported(VERSION + 1));
        assert!(!supported(0));
    }

    #[test]
    fn a_newer_sdk_is_told_both_versions_and_the_install_command() {
        let sdk = from_hello(
            VERSION + 1,
            r#"{"sdk_version":"9.0.0","sdk_path":"/m/paddock","executable":"/m/bin/python3"}"#,
        );
        let m = incompatible(&sdk);
        assert!(
            m.contains(&format!("protocol version {}", VERSION + 1)),
            "{m}"
        );
        assert!(m.contains(&format!("{MIN_VERSION} to {VERSION}")), "{m}");
        assert!(m.contains("SDK 9.0.0 at /m/paddock"), "{m}");
        assert!(m.contains("newer than the daemon"), "{m}");
        assert!(
            m.contains(&format!(
                "/m/bin/python3 -m pip install 'paddock-serve=={}'",
                crate::VERSION
            )),
            "{m}"
        );
        // A worker that names no interpreter still gets the package to install.
        let m = incompatible(&from_hello(0, "{}"));
        assert!(m.contains("older than the daemon"), "{m}");
        assert!(m.contains("pip install 'paddock-serve=="), "{m}");
    }
}
