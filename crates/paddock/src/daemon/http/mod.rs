//! The HTTP side of the daemon: the connection loop (`server`), the routes
//! (`gateway`: probes, status, metrics, the dashboard, OpenAPI and the bearer
//! checks; `calls`: the model routes; `jobs`: the job routes; `admin`: the
//! operator routes), request and streamed bodies, and the answers they share
//! (`errors`).
//!
//! Invariants: nothing outside this folder speaks HTTP; every route answers an error
//! in the JSON shapes of `errors`; the rest of the daemon is reached through
//! `Shared` (its handles) and typed messages, never the other way round.

mod admin;
mod calls;
mod errors;
mod gateway;
mod jobs;
mod request_body;
pub mod server;
mod stream_body;

pub use gateway::router;
