//! Streamed answers (docs/protocol.md, "Streams"): STREAM_START hands the client an
//! `Outcome::Stream` at once, each CHUNK goes to it as it arrives, and STREAM_END (or
//! ERROR) ends it.
//!
//! Invariants:
//! - at most `STREAM_BUFFER` chunks wait for a client; when that many do, the actor
//!   reads no more frames from the worker (its writes block: backpressure), and that
//!   wait is neither the worker's silence (`stream_idle_timeout` stops) nor a reason
//!   to kill it; a client that takes nothing for `stream_write_timeout` is dropped;
//! - a client that is gone (disconnected, or dropped) gets the worker a CANCEL, once;
//!   the worker must end the stream within `cancel_grace` or it is killed; what it
//!   sends meanwhile is discarded;
//! - a stream that fails (an ERROR, a crash, a deadline, a violation) reaches its
//!   client as a failure, never as a complete answer.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use paddock_protocol::Frame;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::conn::Answer;
use super::inflight::{InFlight, OpenStream, STREAM_BUFFER};
use super::{Actor, Timer};
use crate::daemon::lifecycle::Event;
use crate::daemon::messages::{Outcome, StreamItem};
use crate::daemon::metrics::OutcomeLabels;

impl Actor {
    pub(super) fn stream(&self) -> Option<&OpenStream> {
        self.inflight.as_ref()?.stream.as_ref()
    }

    fn stream_mut(&mut self) -> Option<&mut OpenStream> {
        self.inflight.as_mut()?.stream.as_mut()
    }

    /// Whether the actor waits for the client before reading the worker again.
    pub(super) fn stream_stalled(&self) -> bool {
        self.stream().is_some_and(|s| s.stalled.is_some())
    }

    /// STREAM_START for the request in flight (the caller checked its id).
    pub(super) async fn open_stream(&mut self, content_type: String) -> Option<Event> {
        let f = self.inflight.as_mut()?;
        if f.stream.is_some() {
            return Some(Event::ProtocolViolation(
                "STREAM_START inside a stream".into(),
            ));
        }
        let (tx, items) = mpsc::channel(STREAM_BUFFER);
        // The client gets its answer's head now, not when the worker is done.
        let reply = std::mem::replace(&mut f.job.reply, oneshot::channel().0);
        let gone = reply
            .send(Outcome::Stream {
                content_type,
                items,
            })
            .is_err();
        f.stream = Some(OpenStream {
            tx: Some(tx),
            stalled: None,
            last_frame: Instant::now(),
            cancelled_at: None,
            ended: false,
        });
        if gone {
            self.cancel_stream("its client left before it began").await;
        }
        None
    }

    /// A CHUNK of the open stream (discarded once cancelled).
    pub(super) async fn stream_chunk(&mut self, data: Vec<u8>) {
        if let Some(s) = self.stream_mut() {
            s.last_frame = Instant::now();
        }
        self.stream_send(StreamItem::Chunk(Bytes::from(data))).await;
    }

    /// Hands an item to the client; a full buffer stalls the stream.
    async fn stream_send(&mut self, item: StreamItem) {
        let Some(s) = self.stream_mut() else { return };
        let Some(tx) = &s.tx else { return };
        match tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(item)) => s.stalled = Some((item, Instant::now())),
            Err(TrySendError::Closed(_)) => self.cancel_stream("its client disconnected").await,
        }
    }

    /// STREAM_END: complete, once its end has reached the client's buffer.
    pub(super) async fn end_stream(&mut self) -> Option<Event> {
        self.stream_mut()?.ended = true;
        self.stream_send(StreamItem::Done).await;
        self.stream_finished()
    }

    /// ERROR or BAD_REQUEST ending the open stream: its client sees it fail.
    pub(super) fn fail_stream_with(&mut self, answer: Answer) -> Option<Event> {
        let (message, cause) = match answer {
            Answer::BadRequest { message } => (message, serde_json::json!({"kind": "bad_request"})),
            Answer::Refused { status, message } => (
                message,
                serde_json::json!({"kind": "refused", "status": status}),
            ),
            Answer::Error { message, traceback } => match self.handler_error(message, traceback) {
                Outcome::HandlerError {
                    worker, error_id, ..
                } => (
                    format!(
                        "the handler failed mid-stream (error id {error_id}; the service's log has the details)"
                    ),
                    serde_json::json!({"kind": "handler_error", "error_id": error_id, "worker": worker}),
                ),
                _ => unreachable!("handler_error makes a HandlerError"),
            },
            Answer::Reply { .. } => {
                return Some(Event::ProtocolViolation("REPLY inside a stream".into()));
            }
        };
        self.stream_fail(message, cause);
        self.stream_mut()?.ended = true;
        self.stream_finished()
    }

    /// Ends the client's stream in error at once (a deadline, a crash, a
    /// violation): what is stalled is dropped, the failure takes its place.
    pub(super) fn stream_fail(&mut self, message: String, cause: serde_json::Value) {
        let service = self.service().to_string();
        let Some(s) = self.stream_mut() else { return };
        s.stalled = None;
        if let Some(tx) = s.tx.take() {
            // A full buffer cannot take the failure: the channel closes without an
            // end, which the HTTP side reports as a cut-off stream.
            let _ = tx.try_send(StreamItem::Failed { message, cause });
            self.count_stream(&service, "failed");
        }
    }

    /// The request is finished when the worker ended its stream and nothing waits.
    pub(super) fn stream_finished(&mut self) -> Option<Event> {
        let s = self.stream()?;
        if !s.ended || s.stalled.is_some() {
            return None;
        }
        let outcome = match (&s.tx, s.cancelled_at) {
            (_, Some(_)) => None, // counted when cancelled
            (Some(_), None) => Some("done"),
            (None, None) => None, // counted when it failed
        };
        if let Some(o) = outcome {
            let service = self.service().to_string();
            self.count_stream(&service, o);
        }
        self.take_inflight();
        self.after_request();
        Some(Event::Finished)
    }

    /// The client took the stalled item (`permit`), or is gone (`None`).
    pub(super) async fn stream_room(
        &mut self,
        permit: Option<mpsc::OwnedPermit<StreamItem>>,
    ) -> Option<Event> {
        let Some(permit) = permit else {
            self.cancel_stream("its client disconnected").await;
            return self.stream_finished();
        };
        let s = self.stream_mut()?;
        if let Some((item, _)) = s.stalled.take() {
            permit.send(item);
        }
        // The stall was the client's; the worker's silence counts from now.
        s.last_frame = Instant::now();
        self.stream_finished()
    }

    /// Sends CANCEL: the stream's client is gone. Once per stream.
    pub(super) async fn cancel_stream(&mut self, why: &str) {
        let service = self.service().to_string();
        let Some(f) = self.inflight.as_mut() else {
            return;
        };
        let id = f.id;
        let Some(s) = f.stream.as_mut() else { return };
        if s.cancelled_at.is_some() {
            return;
        }
        s.cancelled_at = Some(Instant::now());
        s.tx = None;
        s.stalled = None;
        self.count_stream(&service, "cancelled");
        tracing::info!(worker = %self.name(), "stream {id:#x} cancelled: {why}");
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let bytes = Frame::Cancel { id }
            .encode()
            .expect("a CANCEL frame encodes");
        use tokio::io::AsyncWriteExt;
        let sent =
            tokio::time::timeout(Duration::from_secs(1), conn.writer.write_all(&bytes)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::warn!(worker = %self.name(), "could not send CANCEL; the worker is killed after cancel_grace");
        }
    }

    fn count_stream(&self, service: &str, outcome: &str) {
        self.deps
            .metrics
            .streams
            .get_or_create(&OutcomeLabels {
                service: service.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The stream's own clocks, if one is open: the worker's silence, the client's
    /// stall, the grace after CANCEL.
    pub(super) fn stream_clock(&self) -> Option<(Instant, Timer)> {
        let s = self.stream()?;
        let svc = &self.spec.service;
        if let Some(at) = s.cancelled_at {
            return Some((at + svc.cancel_grace, Timer::CancelGrace));
        }
        if let Some((_, since)) = &s.stalled {
            return Some((*since + svc.stream_write_timeout, Timer::StreamWrite));
        }
        Some((s.last_frame + svc.stream_idle_timeout, Timer::StreamIdle))
    }
}

/// Room in the stalled stream's buffer (or `None`: its client is gone).
pub(super) async fn room(inflight: &Option<InFlight>) -> Option<mpsc::OwnedPermit<StreamItem>> {
    let tx = inflight.as_ref()?.stream.as_ref()?.tx.clone()?;
    tx.reserve_owned().await.ok()
}

/// Completes when the open stream's client is gone.
pub(super) async fn client_gone(inflight: &Option<InFlight>) {
    match inflight
        .as_ref()
        .and_then(|f| f.stream.as_ref())
        .and_then(|s| s.tx.clone())
    {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}
