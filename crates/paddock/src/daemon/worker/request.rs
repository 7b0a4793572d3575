//! The request a worker is serving: sending it, its deadline, its answer (held
//! until the worker has its next request), a crash's retry or poison verdict, and
//! recycling by request count and memory.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Actor;
use super::handle::{Ask, TAIL_LINES};
use super::inflight::InFlight;
use crate::daemon::dispatch::Dispatcher;
use crate::daemon::lifecycle::{Event, State};
use crate::daemon::messages::{CrashCause, DeadlineCause, ExitDetail, Job, Outcome};
use crate::daemon::metrics::Metrics;
use crate::status::ExitCause;

impl Actor {
    /// Sends a request to the worker, or hands it back when this worker cannot take it.
    pub(super) async fn serve(&mut self, job: Job) -> Option<Event> {
        self.announced = false;
        let dispatcher = self.deps.dispatcher.clone()?;
        let ready = matches!(self.life.state, State::Ready { .. })
            && self.inflight.is_none()
            && self.batch.is_none()
            && !self.life.retiring;
        let Some(conn) = self.conn.as_mut().filter(|_| ready) else {
            dispatcher.requeue(job);
            return None;
        };
        let job = job.unless_cancelled()?;
        if !conn.methods.contains(&job.method) {
            let message = format!(
                "service {} has no handler {:?} (it has: {})",
                self.spec.service.name,
                job.method,
                conn.methods.join(", ")
            );
            let _ = job.reply.send(Outcome::NotFound { message });
            return None;
        }
        if let Some(limits) = self.batch_limits(&job.method) {
            return self.serve_batch(job, limits, dispatcher).await;
        }
        let conn = self.conn.as_mut()?;
        self.seq = self.seq.wrapping_add(1);
        let id = paddock_protocol::request_id(self.generation as u32, self.seq);
        let timeout = self.spec.service.request_timeout;
        let idempotent = conn.idempotent.contains(&job.method);
        let bytes = match paddock_protocol::encode_request(
            id,
            timeout.as_millis().min(u32::MAX as u128) as u32,
            &job.method,
            &job.content_type,
            &job.body,
        ) {
            Ok(b) if b.len() <= self.spec.service.max_frame + 4 => b,
            Ok(b) => {
                let message = format!(
                    "the request is {} bytes, over this service's max_frame ({})",
                    b.len(),
                    self.spec.service.max_frame
                );
                let _ = job.reply.send(Outcome::BadRequest { message, code: 413 });
                return None;
            }
            Err(e) => {
                let _ = job.reply.send(Outcome::BadRequest {
                    message: e.to_string(),
                    code: 400,
                });
                return None;
            }
        };
        // In flight (with its deadline) before the first byte is written: a worker
        // that stops reading cannot stall this actor past the deadline.
        let now = Instant::now();
        self.in_flight.inc();
        self.late_read_since = None; // a new deadline, a new grace
        self.inflight = Some(InFlight {
            id,
            job,
            deadline: now + timeout,
            started: now,
            idempotent,
            stream: None,
        });
        self.write_request(bytes, timeout, dispatcher).await
    }

    /// Writes a REQUEST or BATCH frame whose requests are already in flight.
    pub(super) async fn write_request(
        &mut self,
        bytes: Vec<u8>,
        timeout: Duration,
        dispatcher: Dispatcher,
    ) -> Option<Event> {
        let conn = self.conn.as_mut()?;
        // Usually the whole frame fits in the socket at once; if it does not, the
        // answers held back for this write go out before waiting for the worker.
        // (WouldBlock or an error: write_all below waits, or meets the error again.)
        let written = conn.writer.try_write(&bytes).unwrap_or(0);
        if written == bytes.len() {
            return Some(Event::Dispatched);
        }
        send_all(&mut self.replies);
        use tokio::io::AsyncWriteExt;
        match tokio::time::timeout(timeout, conn.writer.write_all(&bytes[written..])).await {
            Ok(Ok(())) => Some(Event::Dispatched),
            Ok(Err(e)) => {
                // The worker is going away; its exit follows. The requests wait for another.
                tracing::warn!(worker = %self.name(), "could not send a request: {e}");
                self.conn = None;
                if let Some(f) = self.take_inflight() {
                    dispatcher.requeue(f.job);
                }
                self.requeue_batch();
                None
            }
            Err(_) => {
                if self.batch.is_some() {
                    self.batch_timed_out().await;
                } else {
                    self.deadline_passed();
                }
                self.pending.push_back(Event::Dispatched);
                self.pending.push_back(Event::DeadlinePassed);
                None
            }
        }
    }

    /// Takes the request being served, if any, out of the in-flight count.
    pub(super) fn take_inflight(&mut self) -> Option<InFlight> {
        let f = self.inflight.take()?;
        self.in_flight.dec();
        Some(f)
    }

    /// Answers the request being served; the answer goes out with the next
    /// `send_replies` (after the worker got its next request, if there is one).
    /// A handler's unexpected exception: tagged with an error id that the client
    /// gets, while the message and traceback go to the service's log.
    pub(super) fn handler_error(&self, message: String, traceback: String) -> Outcome {
        let error_id = new_error_id();
        let worker = self.spec.index;
        self.deps.logs.note_now(
            worker,
            format!("error {error_id}: {message}\n{}", traceback.trim_end()),
        );
        Outcome::HandlerError {
            message,
            traceback,
            worker,
            error_id,
        }
    }

    pub(super) fn finish(&mut self, outcome: Outcome) {
        if let Some(f) = self.take_inflight() {
            self.replies.push((f.job.reply, outcome));
        }
    }

    /// Sends the answers of finished requests to their HTTP clients.
    pub(super) fn send_replies(&mut self) {
        send_all(&mut self.replies);
    }

    /// After a request was answered: count it, and ask for a recycle when due.
    pub(super) fn after_request(&mut self) {
        self.served += 1;
        if self.recycle_after > 0 && self.served >= self.recycle_after && !self.recycle_asked {
            self.ask_recycle(
                format!("served {} requests (max_requests)", self.served),
                true,
            );
        }
    }

    pub(super) fn ask_recycle(&mut self, reason: String, room_for_two: bool) {
        self.recycle_asked = true;
        tracing::info!(worker = %self.name(), "asking for a recycle: {reason}");
        let _ = self.deps.coordinator.send(Ask::Recycle {
            wid: self.spec.wid,
            reason,
            room_for_two,
        });
    }

    /// Compares the worker's memory with max_rss and its GPU memory with
    /// max_gpu_memory; past either, asks for a recycle.
    pub(super) fn check_rss(&mut self) {
        let Some(r) = &self.running else { return };
        let mut tree = paddock_sys::procs::tree_of_group(r.pid);
        if !tree.contains(&r.pid) {
            tree.push(r.pid); // the worker itself, even where the table is unread
        }
        let max_rss = self.spec.service.max_rss;
        if max_rss > 0 {
            let rss: u64 = tree
                .iter()
                .filter_map(|&p| paddock_sys::procs::rss_bytes(p))
                .sum();
            if rss > max_rss {
                return self.ask_recycle(
                    format!(
                        "resident memory {} MiB is over max_rss ({} MiB)",
                        rss >> 20,
                        max_rss >> 20
                    ),
                    true,
                );
            }
        }
        let max_gpu = self.spec.service.gpu.max_memory;
        if max_gpu > 0
            && let Ok(per_pid) = self.deps.gpu.process_memory()
        {
            let used = crate::gpu::memory_of(&per_pid, &tree);
            if used > max_gpu {
                let device = crate::gpu::assigned_device(&self.spec.env_set);
                // Room for a second copy only where the device's free memory is
                // known to hold it; the reason says which.
                let (room, free) = match (device, self.deps.gpu.devices()) {
                    (None, _) => (false, String::new()),
                    (Some(d), Err(e)) => (
                        false,
                        format!("; device {d}'s free memory could not be read ({e})"),
                    ),
                    (Some(d), Ok(devices)) => match devices.iter().find(|x| x.index == d) {
                        None => (false, format!("; NVML does not list device {d}")),
                        Some(x) => (
                            crate::gpu::room_for_two(&devices, d, used),
                            format!(
                                "; device {d} has {} MiB free",
                                x.memory_total.saturating_sub(x.memory_used) >> 20
                            ),
                        ),
                    },
                };
                self.ask_recycle(
                    format!(
                        "GPU memory {} MiB is over max_gpu_memory ({} MiB){free}",
                        used >> 20,
                        max_gpu >> 20
                    ),
                    room,
                );
            }
        }
    }

    pub(super) fn deadline_passed(&mut self) {
        if self.stream().is_some() {
            let timeout = self.spec.service.request_timeout.as_millis();
            self.stream_fail(
                format!(
                    "deadline of {timeout}ms passed; the worker was killed and is being replaced"
                ),
                serde_json::json!({"kind": "deadline"}),
            );
        }
        let Some(r) = &self.running else { return };
        let pid = r.pid;
        let timeout = self.spec.service.request_timeout;
        let cause = match &self.inflight {
            Some(f) => DeadlineCause {
                worker: self.spec.index,
                pid,
                generation: self.generation,
                request_timeout_ms: timeout.as_millis() as u64,
                queued_ms: f.started.duration_since(f.job.received).as_millis() as u64,
                ran_ms: f.started.elapsed().as_millis() as u64,
            },
            None => return,
        };
        let svc = Metrics::service(self.service());
        self.deps.metrics.deadline_kills.get_or_create(&svc).inc();
        self.finish(Outcome::DeadlineKilled { cause });
        tracing::warn!(worker = %self.name(), pid, "request passed its {}ms deadline: killing the worker", timeout.as_millis());
    }

    /// What a client is told of a worker that died with its request: the exit, how
    /// many workers the request has killed, an error id, and the worker's last log
    /// lines (for the operator; see `CrashCause::for_client`). The service's log
    /// gets the error id after those lines.
    pub(super) fn crash_detail(
        &self,
        pid: i32,
        cause: &ExitCause,
        killed: u32,
        log_tail: Vec<String>,
    ) -> CrashCause {
        let error_id = new_error_id();
        self.deps.logs.note_now(
            self.spec.index,
            format!(
                "error {error_id}: worker {} (pid {pid}) {} while serving a request; the lines above are its last output",
                self.spec.index, cause.description
            ),
        );
        CrashCause::Exit(ExitDetail {
            error_id,
            worker: self.spec.index,
            pid,
            generation: self.generation,
            signal: cause.signal.clone(),
            exit_code: cause.exit_code,
            oom_killed: cause.oom_killed,
            description: cause.description.clone(),
            workers_killed_by_this_request: killed,
            log_tail,
        })
    }

    /// The request a dead worker held: retried elsewhere when allowed, else answered.
    pub(super) async fn resolve_crashed(&mut self, mut f: InFlight, pid: i32, cause: &ExitCause) {
        // A stream already under way is not retried: its client sees it fail.
        if let Some(mut s) = f.stream.take() {
            if let Some(tx) = s.tx.take() {
                let _ = tx.try_send(crate::daemon::messages::StreamItem::Failed {
                    message: format!("worker {} {} mid-stream", self.spec.index, cause.description),
                    cause: serde_json::json!({"kind": "crash", "signal": cause.signal, "exit_code": cause.exit_code}),
                });
            }
            return;
        }
        let mut job = f.job;
        if matches!(self.life.state, State::Stopping) {
            let _ = job.reply.send(Outcome::ShuttingDown);
            return;
        }
        job.crashes += 1;
        let s = &self.spec.service;
        let tail = self.deps.logs.tail(self.spec.index, TAIL_LINES).await;
        let detail = self.crash_detail(pid, cause, job.crashes, tail);
        if job.crashes >= s.poison_limit && s.poison_limit > 1 {
            let _ = job.reply.send(Outcome::Poison { cause: detail });
        } else if f.idempotent && job.crashes <= s.retry_on_crash && job.crashes < s.poison_limit {
            tracing::info!(worker = %self.name(), "retrying {:?} on another worker after a crash", job.method);
            if let Some(d) = &self.deps.dispatcher {
                d.requeue(job);
            }
        } else {
            let _ = job.reply.send(Outcome::Crashed { cause: detail });
        }
    }
}

/// An id that tags an error in the service's log and in what the client is told.
pub(super) fn new_error_id() -> String {
    format!(
        "E-{:08x}",
        (crate::jitter::unit() * f64::from(u32::MAX)) as u32
    )
}

/// Sends held answers to their HTTP clients (a client that left is no error).
pub(super) fn send_all(replies: &mut Vec<(oneshot::Sender<Outcome>, Outcome)>) {
    for (tx, outcome) in replies.drain(..) {
        let _ = tx.send(outcome);
    }
}

/// The request count after which a worker is recycled: `max` less up to 10 %.
pub(super) fn recycle_after(max: u64, jitter: f64) -> u64 {
    if max == 0 {
        return 0;
    }
    (max - (max as f64 * 0.1 * jitter) as u64).max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn recycle_after_has_up_to_ten_percent_jitter() {
        assert_eq!(super::recycle_after(0, 0.5), 0);
        assert_eq!(super::recycle_after(1000, 0.0), 1000);
        assert_eq!(super::recycle_after(1000, 0.999), 901);
        assert_eq!(super::recycle_after(1, 0.9), 1);
    }
}
