//! The worker's protocol connection: frames in, parsed and checked against what the
//! actor expects (HELLO first, one reply per request id); anything else is a
//! protocol violation that kills the worker.

use std::collections::BTreeMap;
use std::time::Duration;

use paddock_protocol::Frame;
use paddock_protocol::io::{FrameReader, ReadError};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::Actor;
use crate::daemon::lifecycle::{Event, State};
use crate::daemon::messages::{CrashCause, Outcome, ViolationDetail};
use crate::daemon::metrics::Metrics;

pub(super) struct Conn {
    pub(super) frames: FrameReader<OwnedReadHalf>,
    pub(super) writer: OwnedWriteHalf,
    pub(super) hello: bool,
    /// The protocol version the worker said in HELLO.
    pub(super) version: u16,
    pub(super) methods: Vec<String>,
    pub(super) idempotent: Vec<String>,
    /// Batched methods (version 3): the worker's `max_size` and `max_wait`.
    pub(super) batch: BTreeMap<String, (usize, Duration)>,
}

/// How a worker broke the protocol, in words (what its lifecycle records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Violation(pub(super) String);

/// Wraps our end of the socketpair. The actor reads frames itself, in its
/// `select!` ([`FrameReader::next`] is cancel-safe): no task and no channel between
/// a worker's reply and the actor that hands the worker its next request.
pub(super) fn connect(
    ours: std::os::unix::net::UnixStream,
    max_frame: usize,
) -> std::io::Result<Conn> {
    ours.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(ours)?;
    let (read, writer) = stream.into_split();
    Ok(Conn {
        frames: FrameReader::new(read, max_frame),
        writer,
        hello: false,
        version: 0,
        methods: vec![],
        idempotent: vec![],
        batch: BTreeMap::new(),
    })
}

pub(super) async fn next_frame(conn: &mut Option<Conn>) -> Option<Result<Frame, ReadError>> {
    match conn {
        Some(c) => Some(c.frames.next().await),
        None => std::future::pending().await,
    }
}

/// A worker's answer to the request it holds: one parse, used both while the worker
/// runs and when its last frames are read after it exited.
pub(super) enum Answer {
    Reply {
        content_type: String,
        body: Vec<u8>,
    },
    /// The handler raised (an unexpected exception).
    Error {
        message: String,
        traceback: String,
    },
    /// The request was wrong (protocol version 2).
    BadRequest {
        message: String,
    },
    /// The handler refused it with this HTTP status (protocol version 6).
    Refused {
        status: u16,
        message: String,
    },
}

impl Answer {
    /// The request id and answer a frame carries, or the frame back when it is no
    /// answer (or one that `version` does not have).
    pub(super) fn of(frame: Frame, version: u16) -> Result<(u64, Answer), Frame> {
        match frame {
            Frame::Reply {
                id,
                content_type,
                body,
            } => Ok((id, Answer::Reply { content_type, body })),
            Frame::Error {
                id,
                message,
                traceback,
            } => Ok((id, Answer::Error { message, traceback })),
            Frame::BadRequest { id, message } if version >= 2 => {
                Ok((id, Answer::BadRequest { message }))
            }
            Frame::Refused {
                id,
                status,
                message,
            } if version >= 6 => Ok((id, Answer::Refused { status, message })),
            other => Err(other),
        }
    }
}

impl Actor {
    /// The request in flight is answered (the caller checked the id).
    pub(super) fn take_answer(&mut self, answer: Answer) {
        let outcome = match answer {
            Answer::Reply { content_type, body } => Outcome::Ok { content_type, body },
            Answer::Error { message, traceback } => self.handler_error(message, traceback),
            Answer::BadRequest { message } => Outcome::BadRequest { message, code: 400 },
            Answer::Refused { status, message } => Outcome::Refused { status, message },
        };
        self.finish(outcome);
    }

    pub(super) async fn on_frame(
        &mut self,
        frame: Option<Result<Frame, ReadError>>,
    ) -> Option<Event> {
        let conn = self.conn.as_mut()?;
        let frame = match frame {
            None | Some(Err(ReadError::Closed)) => {
                // The worker closed its socket: its exit should follow; if it does not
                // within a second, it is killed (it can serve nothing any more).
                self.conn = None;
                return Some(Event::SocketClosed);
            }
            // Nothing after a bad frame can be trusted (or even found): the
            // connection is dropped with the worker, which is killed for it.
            Some(Err(e)) => {
                self.conn = None;
                // The lifecycle's message says "protocol violation" itself.
                let why = match e {
                    ReadError::Protocol(inner) => inner.to_string(),
                    other => other.to_string(),
                };
                return Some(Event::ProtocolViolation(why));
            }
            Some(Ok(f)) => f,
        };
        if !conn.hello {
            return match frame {
                Frame::Hello { version, pid, meta } => {
                    let sdk = crate::sdk::from_hello(version, &meta);
                    if !crate::sdk::supported(version) {
                        // No restart can change the SDK the worker imports.
                        self.conn = None;
                        let why = crate::sdk::incompatible(&sdk);
                        self.sdk = Some(sdk);
                        return Some(Event::Incompatible(why));
                    }
                    self.sdk = Some(sdk);
                    conn.hello = true;
                    conn.version = version;
                    tracing::debug!(worker = %self.name(), pid, "HELLO {meta}");
                    self.progress("loading (HELLO received)".into());
                    None
                }
                other => Some(Event::ProtocolViolation(format!(
                    "frame 0x{:02x} before HELLO",
                    other.kind()
                ))),
            };
        }
        let version = conn.version;
        if let Frame::ForkWarning { json } = frame {
            if version < 5 {
                return Some(Event::ProtocolViolation(format!(
                    "FORK_WARNING is not part of protocol version {version}"
                )));
            }
            self.fork_warning(&json);
            return None;
        }
        match frame {
            Frame::Ready { json } => self.on_ready(&json),
            Frame::SetupFailed { text } => Some(Event::SetupFailed(text)),
            frame @ (Frame::Reply { .. }
            | Frame::Error { .. }
            | Frame::BadRequest { .. }
            | Frame::Refused { .. }) => match Answer::of(frame, version) {
                Ok((id, answer)) if self.is_open_stream(id) => self.fail_stream_with(answer),
                Ok((id, answer)) if self.inflight.as_ref().is_some_and(|f| f.id == id) => {
                    self.take_answer(answer);
                    self.after_request();
                    Some(Event::Finished)
                }
                Ok((id, _)) => Some(self.wrong_id(id)),
                Err(other) => Some(Event::ProtocolViolation(format!(
                    "frame 0x{:02x} is not part of protocol version {}",
                    other.kind(),
                    version
                ))),
            },
            Frame::BatchReply { results } if version >= 3 => {
                if let Err(why) = self.answers_batch(&results) {
                    return Some(Event::ProtocolViolation(why.0));
                }
                let n = self.take_batch_answers(results) as u64;
                self.served += n.saturating_sub(1);
                self.after_request();
                Some(Event::Finished)
            }
            Frame::StreamStart { id, content_type } if version >= 4 => {
                if self.inflight.as_ref().is_some_and(|f| f.id == id) {
                    self.open_stream(content_type).await
                } else {
                    Some(self.wrong_id(id))
                }
            }
            Frame::Chunk { id, data } if version >= 4 => {
                if !self.is_open_stream(id) {
                    return Some(self.wrong_id(id));
                }
                self.stream_chunk(data).await;
                None
            }
            Frame::StreamEnd { id } if version >= 4 => {
                if !self.is_open_stream(id) {
                    return Some(self.wrong_id(id));
                }
                self.end_stream().await
            }
            Frame::StreamStart { .. } | Frame::Chunk { .. } | Frame::StreamEnd { .. } => {
                Some(Event::ProtocolViolation(format!(
                    "streamed replies are not part of protocol version {}",
                    version
                )))
            }
            other => Some(Event::ProtocolViolation(format!(
                "unexpected frame 0x{:02x} from a worker",
                other.kind()
            ))),
        }
    }

    /// READY: the worker's handlers (and its batched ones' limits) become the
    /// dispatcher's, and its load time is measured; it is ready only when the
    /// lifecycle says so (`ProvenReady`).
    fn on_ready(&mut self, json: &str) -> Option<Event> {
        let conn = self.conn.as_mut()?;
        if !matches!(self.life.state, State::Starting { .. }) {
            return Some(Event::ProtocolViolation("READY when not starting".into()));
        }
        let v: serde_json::Value = match serde_json::from_str(json) {
            Ok(v) => v,
            Err(e) => {
                return Some(Event::ProtocolViolation(format!("READY is not JSON: {e}")));
            }
        };
        let list = |k: &str| -> Vec<String> {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        conn.methods = list("methods");
        conn.idempotent = list("idempotent");
        conn.batch = match batch_limits(&v["batch"], &conn.methods) {
            Ok(b) => b,
            Err(why) => return Some(Event::ProtocolViolation(why.0)),
        };
        if let Some(d) = &self.deps.dispatcher {
            d.set_methods(&conn.methods, &conn.idempotent);
        }
        let batched: Vec<String> = conn.batch.keys().cloned().collect();
        if let Some(r) = &self.running {
            let secs = r.spawned.elapsed().as_secs_f64();
            self.load_ms = Some(r.spawned.elapsed().as_millis() as u64);
            self.deps
                .metrics
                .load_seconds
                .get_or_create(&Metrics::service(self.service()))
                .observe(secs);
        }
        let sizes = batched
            .iter()
            .filter_map(|m| Some((m.clone(), self.batch_limits(m)?.max_size)))
            .collect();
        if let Some(d) = &self.deps.dispatcher {
            d.set_batch_sizes(sizes);
        }
        Some(Event::ProvenReady)
    }

    /// The worker broke the protocol: the request it held is answered 502 now.
    pub(super) fn answer_violation(&mut self, ev: Event) -> Event {
        let Event::ProtocolViolation(why) = &ev else {
            return ev;
        };
        let why = why.clone();
        // A batch's requests were not at fault: they run again elsewhere.
        self.requeue_batch();
        if self.stream().is_some() {
            self.stream_fail(
                format!(
                    "worker {} broke the worker protocol mid-stream ({why}) and was killed",
                    self.spec.index
                ),
                serde_json::json!({"kind": "protocol_violation"}),
            );
        }
        if let Some(f) = &self.inflight {
            let cause = CrashCause::Violation(ViolationDetail {
                worker: self.spec.index,
                pid: self.running.as_ref().map(|r| r.pid),
                generation: self.generation,
                description: format!("broke the worker protocol ({why}) and was killed"),
                protocol_violation: why,
                queued_ms: f.started.duration_since(f.job.received).as_millis() as u64,
            });
            self.finish(Outcome::Crashed { cause });
        }
        ev
    }

    /// The worker forked with several OS threads (the SDK's fork guard): logged,
    /// counted, shown in `status`.
    pub(super) fn fork_warning(&mut self, json: &str) {
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let threads = v["threads"].as_u64().unwrap_or(0);
        let site = v["site"].as_str().unwrap_or("an unknown call site");
        let what = if v["cuda"].as_bool() == Some(true) {
            format!(
                "forked with {threads} OS threads at {site}, after initialising CUDA (the child cannot use it)"
            )
        } else {
            format!("forked with {threads} OS threads at {site}")
        };
        tracing::warn!(worker = %self.name(), "{what}: the child may deadlock on a lock one of those threads held (see `paddock doctor`)");
        self.deps.logs.note_now(
            self.spec.index,
            format!("fork guard: {what}; the child may hang (docs/operations.md, \"Forks\")"),
        );
        self.deps
            .metrics
            .fork_warnings
            .get_or_create(&Metrics::service(self.service()))
            .inc();
        self.forks_with_threads += 1;
        self.last_fork = Some(what);
    }

    /// Whether `id` is the request in flight and its stream is open.
    pub(super) fn is_open_stream(&self, id: u64) -> bool {
        self.inflight
            .as_ref()
            .is_some_and(|f| f.id == id && f.stream.is_some())
    }

    pub(super) fn wrong_id(&self, id: u64) -> Event {
        let outstanding = self
            .inflight
            .as_ref()
            .map(|f| format!("{:#x}", f.id))
            .unwrap_or_else(|| "none".into());
        Event::ProtocolViolation(format!(
            "reply to request {id:#x} (generation {}), but the outstanding request is {outstanding}",
            paddock_protocol::generation_of(id)
        ))
    }
}

/// READY's `batch` key: `{"method": {"max_size": N, "max_wait_ms": M}}` for methods
/// the worker listed (docs/protocol.md); anything else breaks the protocol.
fn batch_limits(
    v: &serde_json::Value,
    methods: &[String],
) -> Result<BTreeMap<String, (usize, Duration)>, Violation> {
    let mut out = BTreeMap::new();
    let Some(map) = v.as_object() else {
        return if v.is_null() {
            Ok(out)
        } else {
            Err(Violation("READY's batch is not an object".into()))
        };
    };
    for (method, limits) in map {
        if !methods.contains(method) {
            return Err(Violation(format!(
                "READY batches {method:?}, which is not in its methods"
            )));
        }
        let size = limits["max_size"]
            .as_u64()
            .filter(|n| (1..=4096).contains(n));
        let wait = limits["max_wait_ms"].as_u64().filter(|n| *n <= 10_000);
        match (size, wait) {
            (Some(size), Some(wait)) => {
                out.insert(method.clone(), (size as usize, Duration::from_millis(wait)));
            }
            _ => {
                return Err(Violation(format!(
                    "READY's batch limits of {method:?} are not max_size 1..=4096 and max_wait_ms 0..=10000"
                )));
            }
        }
    }
    Ok(out)
}
