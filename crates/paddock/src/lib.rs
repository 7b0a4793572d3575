//! paddock: run machine-learning models as reliable local services.
//!
//! Layers, from the edge inwards: [`cli`] (parse, validate, one module per command)
//! → [`daemon`] (supervisor, gateway, control socket; actors, not shared locks) →
//! [`config`], [`instance`], [`status`], [`control`] (plain data) → `paddock-sys`
//! (every unsafe block and OS call).

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod exit;
pub mod instance;
pub mod status;
pub mod timefmt;
