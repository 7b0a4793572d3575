//! Exit codes: the contract scripts and tests rely on (see PRODUCT.md).

pub const OK: i32 = 0;
/// A service failed; its cause was printed.
pub const FAILURE: i32 = 1;
/// Usage or config error.
pub const USAGE: i32 = 2;
/// `start`: the instance is already running.
pub const ALREADY_RUNNING: i32 = 3;
/// `stop`, `status`, `logs`, `reload`: the instance is not running.
pub const NOT_RUNNING: i32 = 4;
/// Timed out waiting for readiness.
pub const TIMED_OUT: i32 = 5;
/// `stop`: timed out waiting for the daemon to stop.
pub const STOP_TIMED_OUT: i32 = 6;
