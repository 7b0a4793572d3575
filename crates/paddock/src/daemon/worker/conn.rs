//! The worker's protocol connection: frames in, parsed and checked against what the
//! actor expects (HELLO first, one reply per request id); anything else is a
//! protocol violation that kills the worker.

use super::*;

pub(super) struct Conn {
    pub(super) frames: FrameReader<OwnedReadHalf>,
    pub(super) writer: OwnedWriteHalf,
    pub(super) hello: bool,
    /// The protocol version the worker said in HELLO.
    pub(super) version: u16,
    pub(super) methods: Vec<String>,
    pub(super) idempotent: Vec<String>,
}

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
    })
}

pub(super) async fn next_frame(conn: &mut Option<Conn>) -> Option<Result<Frame, ReadError>> {
    match conn {
        Some(c) => Some(c.frames.next().await),
        None => std::future::pending().await,
    }
}

impl Actor {
    pub(super) fn on_frame(&mut self, frame: Option<Result<Frame, ReadError>>) -> Option<Event> {
        let conn = self.conn.as_mut()?;
        let frame = match frame {
            None | Some(Err(ReadError::Closed)) => {
                // The worker closed its socket: its exit should follow; if it does not
                // within a second, it is killed (it can serve nothing any more).
                self.conn = None;
                self.eof_at = Some(Instant::now());
                return None;
            }
            // Nothing after a bad frame can be trusted (or even found): the
            // connection is dropped with the worker, which is killed for it.
            Some(Err(e)) => {
                self.conn = None;
                return Some(Event::ProtocolViolation(e.to_string()));
            }
            Some(Ok(f)) => f,
        };
        if !conn.hello {
            return match frame {
                Frame::Hello { version, pid, meta } => {
                    if !(paddock_protocol::MIN_VERSION..=paddock_protocol::VERSION)
                        .contains(&version)
                    {
                        return Some(Event::ProtocolViolation(format!(
                            "the worker speaks protocol version {version}; this daemon speaks {} to {}",
                            paddock_protocol::MIN_VERSION,
                            paddock_protocol::VERSION
                        )));
                    }
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
        match frame {
            Frame::Ready { json } => {
                if !matches!(self.life.state, State::Starting { .. }) {
                    return Some(Event::ProtocolViolation("READY when not starting".into()));
                }
                let v: serde_json::Value = match serde_json::from_str(&json) {
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
                if let Some(d) = &self.deps.dispatcher {
                    d.set_methods(&conn.methods);
                }
                if let Some(r) = &self.running {
                    let secs = r.spawned.elapsed().as_secs_f64();
                    self.deps
                        .metrics
                        .load_seconds
                        .get_or_create(&Metrics::service(self.service()))
                        .observe(secs);
                }
                Some(Event::ProvenReady)
            }
            Frame::SetupFailed { text } => Some(Event::SetupFailed(text)),
            Frame::Reply {
                id,
                content_type,
                body,
            } => match &self.inflight {
                Some(f) if f.id == id => {
                    self.finish(Outcome::Ok { content_type, body });
                    self.after_request();
                    Some(Event::Finished)
                }
                _ => Some(self.wrong_id(id)),
            },
            Frame::Error {
                id,
                message,
                traceback,
            } => match &self.inflight {
                Some(f) if f.id == id => {
                    let outcome = self.handler_error(message, traceback);
                    self.finish(outcome);
                    self.after_request();
                    Some(Event::Finished)
                }
                _ => Some(self.wrong_id(id)),
            },
            Frame::BadRequest { id, message } if conn.version >= 2 => match &self.inflight {
                Some(f) if f.id == id => {
                    self.finish(Outcome::BadRequest { message, code: 400 });
                    self.after_request();
                    Some(Event::Finished)
                }
                _ => Some(self.wrong_id(id)),
            },
            Frame::StreamStart { .. } | Frame::Chunk { .. } | Frame::StreamEnd { .. } => {
                Some(Event::ProtocolViolation(
                    "streamed replies are not supported by this daemon yet".into(),
                ))
            }
            other => Some(Event::ProtocolViolation(format!(
                "unexpected frame 0x{:02x} from a worker",
                other.kind()
            ))),
        }
    }

    /// The worker broke the protocol: the request it held is answered 502 now.
    pub(super) fn answer_violation(&mut self, ev: Event) -> Event {
        let Event::ProtocolViolation(why) = &ev else {
            return ev;
        };
        let why = why.clone();
        if let Some(f) = &self.inflight {
            let cause = json!({
                "worker": self.spec.index,
                "pid": self.running.as_ref().map(|r| r.pid),
                "generation": self.generation,
                "protocol_violation": why,
                "description": format!("broke the worker protocol ({why}) and was killed"),
                "queued_ms": f.started.duration_since(f.job.received).as_millis() as u64,
            });
            self.finish(Outcome::Crashed { cause });
        }
        ev
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
