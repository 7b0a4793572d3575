//! paddock: run machine-learning models as reliable local services.
//!
//! Layers, from the edge inwards: [`cli`] (parse, validate, one module per command)
//! → [`daemon`] (supervisor, gateway, control socket; actors, not shared locks) →
//! [`config`], [`instance`], [`status`], [`control`] (plain data) → `paddock-sys`
//! (every unsafe block and OS call).

#![forbid(unsafe_code)]

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
pub(crate) mod status;
pub(crate) mod timefmt;
