//! The config file, `paddock.toml`: parsing, defaults and validation.
//!
//! Invariant: every command loads the config through [`load`] before doing anything
//! else, so a config error always stops the command with exit 2 and a message that
//! names the file, line, column and key. Values are checked while parsing where they
//! can be (durations, names, commands); cross-field rules (two services on one port)
//! are checked afterwards and located in the source by [`locate`].

mod batch;
mod checker;
pub mod gpu;
mod instance;
mod locate;
mod model;
mod raw;
mod scaling;
pub mod schedule;
mod service;
#[cfg(test)]
mod tests;
pub mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use checker::Checker;
pub use model::{
    Config, Health, Instance, Kind, LogFormat, ReloadStrategy, Restart, Scaling, Service, Store,
};
use raw::RawConfig;
pub use values::PortSpec;

/// `job_store_max_size` when the config says nothing: 1 GiB of jobs.
pub const DEFAULT_JOB_STORE_MAX: u64 = 1 << 30;

/// A config error: where it is, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {}{message}", file.display(), key_prefix(key))]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("`{key}`: ")
    }
}

/// Reads and validates `path`; `port` overrides the listen port (another instance).
pub fn load(path: &Path, port: Option<u16>) -> Result<Config, ConfigError> {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(&abs).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&abs, &text, port)
}

/// An error about `table.key` of the config file at `path`, located in its text (at
/// the file's start where the key is not written: a default is at fault).
pub fn error_at(path: &Path, table: &str, key: &str, message: String) -> ConfigError {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    Checker { path, text: &text }.at(table, key, message)
}

/// Validates `text` as the contents of the config file `path`.
pub fn parse(path: &Path, text: &str, port: Option<u16>) -> Result<Config, ConfigError> {
    let c = Checker { path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        c.invalid(
            offset,
            locate::key_path_at(text, offset),
            e.message().trim().to_string(),
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let instance = instance::build(&c, raw.instance, &dir, port)?;
    let mut services = vec![];
    // Fixed ports, each with the service that claims it: no two may share one.
    let mut fixed_ports: BTreeMap<u16, String> = BTreeMap::new();
    for (name, rs) in raw.services {
        services.push(service::build(
            &c,
            name,
            rs,
            &instance,
            &dir,
            &mut fixed_ports,
        )?);
    }
    if services.is_empty() {
        return Err(c.invalid(
            0,
            "services".into(),
            "no services: add a [services.NAME] table".into(),
        ));
    }
    Ok(Config {
        path: path.to_path_buf(),
        instance,
        services,
    })
}
