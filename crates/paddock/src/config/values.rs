//! Value types of the config file whose validation happens while parsing, so that
//! the parser's error carries the offending value's exact position.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A value the config file cannot hold, in words: what it is, and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

/// A name of an instance or a service: `[a-z0-9][a-z0-9_-]*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Name, BadValue> {
        let mut chars = s.chars();
        let ok = match chars.next() {
            Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() => {
                chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            }
            _ => false,
        };
        if ok && s.len() <= 64 {
            Ok(Name(s.to_string()))
        } else {
            Err(BadValue(format!(
                "invalid name {s:?}: names are 1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
            )))
        }
    }

    /// Turns any folder name into a valid name ("My Model" -> "my-model").
    pub fn sanitize(s: &str) -> Name {
        let mut out: String = s
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        while out.starts_with(['-', '_']) {
            out.remove(0);
        }
        out.truncate(64);
        if out.is_empty() {
            out = "paddock".into();
        }
        Name(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::parse(&s).map_err(de::Error::custom)
    }
}

/// A duration written as "500ms", "30s", "2m" or "1h".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, BadValue> {
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| bad_duration(s))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            _ => return Err(bad_duration(s)),
        };
        if !(0.0..=86400.0 * 365.0).contains(&secs) {
            return Err(bad_duration(s));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

/// `job_retention`: a duration from 1s to 365d (default 7d), or "forever" (None).
pub(super) fn retention(v: Option<&str>) -> Result<Option<Duration>, BadValue> {
    match v {
        None => Ok(Some(Duration::from_secs(7 * 86400))),
        Some("forever") => Ok(None),
        Some(v) => Dur::parse(v)
            .ok()
            .map(|d| d.0)
            .filter(|d| *d >= Duration::from_secs(1))
            .map(Some)
            .ok_or_else(|| {
                BadValue(format!(
                    "{v:?}: write a duration from 1s to 365d, or \"forever\""
                ))
            }),
    }
}

fn bad_duration(s: &str) -> BadValue {
    BadValue(format!(
        "invalid duration {s:?}: write a number and a unit, e.g. \"500ms\", \"30s\", \"2m\", \"1h\", \"7d\""
    ))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(de::Error::custom)
    }
}

/// A size in bytes: an integer, or "512KiB", "10MiB", "1GiB" (also KB/MB/GB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl Bytes {
    pub fn parse(s: &str) -> Result<Bytes, BadValue> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad_bytes(s))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "KB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad_bytes(s)),
        };
        n.checked_mul(mult).map(Bytes).ok_or_else(|| bad_bytes(s))
    }
}

fn bad_bytes(s: &str) -> BadValue {
    BadValue(format!(
        "invalid size {s:?}: write e.g. \"10MiB\", \"512KiB\", \"1GiB\" or a number of bytes"
    ))
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"10MiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
                u64::try_from(v)
                    .map(Bytes)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                Bytes::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A program's argv: at least one non-empty element, never a shell string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Argv;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an argv array such as [\"python3\", \"worker.py\"]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Argv, E> {
                Err(E::custom(format!(
                    "command must be an argv array, not a shell string: write {:?}",
                    v.split_whitespace().collect::<Vec<_>>()
                )))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Argv, A::Error> {
                let mut v: Vec<String> = vec![];
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                if v.is_empty() {
                    return Err(de::Error::custom(
                        "command is empty: give at least the program to run",
                    ));
                }
                if v[0].trim().is_empty() {
                    return Err(de::Error::custom(
                        "command's program (its first element) is empty",
                    ));
                }
                Ok(Argv(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `port = "auto"` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSpec {
    Auto,
    Fixed(u16),
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535) or \"auto\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(PortSpec::Fixed(p)),
                    _ => Err(E::custom(format!("port {v} is out of range 1-65535"))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                if v == "auto" {
                    Ok(PortSpec::Auto)
                } else {
                    Err(E::custom(format!(
                        "port {v:?} is neither a number nor \"auto\""
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration as a person writes it, for error messages.
pub(super) fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `$XDG_STATE_HOME/paddock`, else `~/.local/state/paddock`, else a folder in /tmp.
pub fn default_state_dir() -> std::path::PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return std::path::PathBuf::from(x).join("paddock");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return std::path::PathBuf::from(h).join(".local/state/paddock");
    }
    std::env::temp_dir().join(format!("paddock-state-{}", paddock_sys::current_uid()))
}

/// The most workers one service may have.
pub const MAX_WORKERS: u64 = 1024;
/// The shortest duration any key accepts.
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// The longest duration any key accepts (30 days: deadlines are added to clocks).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("500ms").unwrap().0, Duration::from_millis(500));
        assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert!(Dur::parse("10").is_err());
        assert!(Dur::parse("ten s").is_err());
        assert!(Dur::parse("5 parsecs").is_err());
    }

    #[test]
    fn names() {
        assert!(Name::parse("embed-2_x").is_ok());
        assert!(Name::parse("Embed").is_err());
        assert!(Name::parse("-x").is_err());
        assert!(Name::parse("").is_err());
        assert_eq!(Name::sanitize(".tmpAB c").as_str(), "tmpab-c");
    }

    #[test]
    fn sizes() {
        assert_eq!(Bytes::parse("10MiB").unwrap().0, 10 << 20);
        assert_eq!(Bytes::parse("512").unwrap().0, 512);
        assert!(Bytes::parse("10 furlongs").is_err());
    }
}
