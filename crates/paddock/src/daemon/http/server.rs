//! Serving the gateway's HTTP connections, with the limits a hostile client meets.
//!
//! Why not `axum::serve`: it has no header-read timer, no connection cap and no way
//! to drop a connection that is merely idle when the daemon stops, so one client
//! that sends half a request head could keep the daemon alive for as long as it
//! liked, and a flood of idle connections could use every descriptor.
//!
//! Invariants:
//! - at most `max_connections` connections are open; beyond that new connections
//!   wait in the listen backlog (they are not accepted, so they cost no descriptor
//!   of ours) until one closes;
//! - a connection must send a complete request head within `header_timeout` of
//!   becoming idle (when it is accepted, and after each response): a slow sender
//!   and an idle keep-alive connection are closed alike;
//! - when the daemon stops, a connection with no request being handled is closed at
//!   once, and so is one whose client is still sending its request (head or body);
//!   one with a whole request in a handler gets its answer first (the handler is
//!   bounded by the service's deadlines), then closes;
//! - `accept` failing for want of descriptors (EMFILE, ENFILE) pauses the loop
//!   instead of spinning on the error.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// The limits of the gateway's connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Whether an accept error means "out of descriptors" (wait for one to close).
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(n) if n == paddock_sys::limits::EMFILE || n == paddock_sys::limits::ENFILE
    )
}

/// Accepts and serves connections until `shutdown` turns true; returns when every
/// connection has closed (see the module's invariants for how long that takes).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = JoinSet::new();
    let mut warned_full = false;
    loop {
        // Reap finished connection tasks as we go.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.wait_for(|s| *s) => break,
        };
        if slots.available_permits() == 0 && !warned_full {
            tracing::warn!(
                "the gateway has {} connections open (instance.max_connections): new ones wait until one closes",
                limits.max_connections
            );
            warned_full = true;
        } else if slots.available_permits() > limits.max_connections / 2 {
            warned_full = false;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                let pause = if out_of_descriptors(&e) {
                    tracing::warn!("gateway: cannot accept a connection: {e}; pausing 100ms");
                    Duration::from_millis(100)
                } else {
                    Duration::from_millis(5)
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
                continue;
            }
        };
        let app = app.clone();
        let stop = shutdown.clone();
        conns.spawn(async move {
            connection(stream, app, limits, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Serves one connection to its end.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let busy = Arc::new(AtomicUsize::new(0));
    let counter = busy.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        // Counted as busy once its body has arrived whole (at once for a request
        // without one): a client still sending holds up no shutdown.
        let slot = Arc::new(Slot {
            counter: counter.clone(),
            counted: AtomicBool::new(false),
        });
        let app = app.clone();
        let held = slot.clone();
        async move {
            let req = req.map(|body| {
                if body.is_end_stream() {
                    slot.count();
                }
                axum::body::Body::new(Received { inner: body, slot })
            });
            let response = app.oneshot(req).await;
            drop(held);
            Ok::<_, Infallible>(response.unwrap_or_else(|e| match e {}))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.wait_for(|s| *s) => {}
    }
    // Stopping. Nobody waits on a connection that is idle or still sending its
    // request (head or body): drop it now.
    if busy.load(Ordering::Acquire) == 0 {
        return;
    }
    // A request is in a handler: let it answer, then close.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A request's place in its connection's count of requests in a handler: counted
/// from the moment its body has arrived whole until the handler has answered (and
/// the body, if the handler kept it, is dropped).
struct Slot {
    counter: Arc<AtomicUsize>,
    counted: AtomicBool,
}

impl Slot {
    fn count(&self) {
        if !self.counted.swap(true, Ordering::AcqRel) {
            self.counter.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if *self.counted.get_mut() {
            self.counter.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A request body that counts its request as busy once it has been received whole.
struct Received {
    inner: Incoming,
    slot: Arc<Slot>,
}

impl http_body::Body for Received {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.slot.count();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
