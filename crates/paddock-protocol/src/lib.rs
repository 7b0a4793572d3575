//! The paddock worker protocol (version 6), specified in `docs/protocol.md`.
//!
//! Why a crate of its own: the protocol is the contract between the daemon and
//! workers written in any language; it must be testable (property tests, a fuzz
//! target) without the daemon.
//!
//! Invariants:
//! - a frame's declared length is checked against the maximum **before** anything is
//!   allocated for it;
//! - decoding never panics, whatever the input: every malformed input is an `Error`;
//! - request ids carry the worker's generation in their high 32 bits.

#![forbid(unsafe_code)]

#[cfg(feature = "tokio")]
pub mod io;

/// The protocol version this crate speaks.
pub const VERSION: u16 = 6;
/// The oldest version a worker may say in HELLO (version 2 only added a frame
/// that version-1 workers never send).
pub const MIN_VERSION: u16 = 1;
/// The default maximum frame size (type byte and payload), 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;
/// The descriptor number the worker's socket gets.
pub const WORKER_FD: i32 = 3;

mod decode;
mod encode;
mod frame;
#[cfg(test)]
mod tests;

pub use decode::{check_len, decode};
pub use encode::{BatchItemRef, encode_batch, encode_request};
pub use frame::{
    BatchItem, BatchResult, Error, Frame, ItemOutcome, Request, generation_of, kind, request_id,
};
