//! paddock: run machine-learning models as reliable local services.
//!
//! Layers, from the edge inwards: [`cli`] (parse, validate, one module per command)
//! → [`daemon`] (supervisor, gateway, control socket; actors, not shared locks) →
//! [`config`], [`instance`], [`status`], [`control`] (plain data) → `paddock-sys`
//! (every unsafe block and OS call).

#![forbid(unsafe_code)]

/// This release of paddock (the Cargo workspace's version: the one source of the
/// wheel's version, `paddock --version` and the SDK's `paddock.__version__`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The name of paddock's distribution on PyPI (`pip install paddock-serve`): the
/// command and the Python module are both `paddock`, a name PyPI gave to another
/// project.
pub const DISTRIBUTION: &str = "paddock-serve";

pub mod cli;
pub(crate) mod config;
pub(crate) mod control;
pub(crate) mod daemon;
pub(crate) mod exec_listen;
pub(crate) mod exit;
pub mod gpu;
pub(crate) mod instance;
pub(crate) mod jitter;
pub(crate) mod openapi;
pub(crate) mod schedules;
pub(crate) mod sdk;
pub(crate) mod status;
pub(crate) mod timefmt;
