//! The actor's decisions, tested against fake children (`fake.rs`): no process, no
//! Python, milliseconds each.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;

use super::fake::FakeLauncher;
use super::*;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::daemon::dispatch::Dispatcher;
use crate::daemon::logsink::LogSink;
use crate::daemon::messages::CrashCause;
use crate::daemon::spawner::Spawner;

/// How long any awaited event may take before the test fails.
const LIMIT: Duration = Duration::from_secs(5);

/// One worker slot of service `svc` (its config is `extra`), on fake children.
struct Rig {
    launcher: Arc<FakeLauncher>,
    dispatcher: Dispatcher,
    handle: Handle,
    asks: mpsc::UnboundedReceiver<Ask>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(extra: &str) -> Rig {
        Rig::with_gpu(extra, Arc::new(crate::gpu::fake::FakeGpus::none()))
    }

    /// A slot on `gpu`'s machine; a service with `devices` gets its device's
    /// variables, as the supervisor would set them.
    fn with_gpu(extra: &str, gpu: Arc<crate::gpu::fake::FakeGpus>) -> Rig {
        let text = format!("[services.svc]\ncommand = [\"fake\"]\n{extra}\n");
        let config = crate::config::parse(Path::new("/nonexistent/paddock.toml"), &text, None)
            .expect("the test's config is valid");
        let service = Arc::new(config.services[0].clone());
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let dispatcher = Dispatcher::start("svc", 100, Duration::from_secs(10), metrics.clone());
        let (coordinator, asks) = mpsc::unbounded_channel();
        let launcher = Arc::new(FakeLauncher::default());
        let deps = Deps {
            launcher: launcher.clone(),
            spawner: Spawner::start(tokio::runtime::Handle::current(), None).unwrap(),
            logs: LogSink::start("svc", dir.path().to_path_buf(), 1 << 20, 2),
            startup: mpsc::unbounded_channel().0,
            metrics,
            dispatcher: Some(dispatcher.clone()),
            coordinator,
            gpu,
        };
        let device = service.gpu.assign(&[0], 1)[0];
        let spec = Spec {
            service,
            index: 0,
            wid: 1,
            port: None,
            argv: vec!["fake".into()],
            listener: None,
            cwd: dir.path().to_path_buf(),
            env_set: crate::daemon::env::on_device(BTreeMap::new(), device, false),
            start_delay: Duration::ZERO,
            initial: false,
            on_demand: false,
            generations: Arc::new(AtomicU64::new(0)),
        };
        Rig {
            launcher,
            dispatcher,
            handle: start(spec, deps),
            asks,
            _dir: dir,
        }
    }

    /// Waits until the worker's status satisfies `ok`.
    async fn until(&mut self, what: &str, ok: impl Fn(&WorkerStatus) -> bool) -> WorkerStatus {
        let found = tokio::time::timeout(LIMIT, self.handle.status.wait_for(|s| ok(s)))
            .await
            .ok()
            .and_then(|r| r.ok().map(|s| s.clone()));
        match found {
            Some(s) => s,
            None => panic!(
                "the worker never became {what}; it is {:?}",
                *self.handle.status.borrow()
            ),
        }
    }

    async fn ready(&mut self) -> WorkerStatus {
        self.until("ready", |s| s.state == Phase::Ready).await
    }

    /// Sends a request for `method` and waits for its outcome.
    async fn call(&self, method: &str, body: &str) -> Outcome {
        let rx = self.send(method, body);
        tokio::time::timeout(LIMIT, rx)
            .await
            .expect("the request was answered in time")
            .expect("the request was answered, not dropped")
    }

    fn send(&self, method: &str, body: &str) -> oneshot::Receiver<Outcome> {
        self.dispatcher.submit(
            method.into(),
            "text/plain".into(),
            Bytes::from(body.to_string()),
        )
    }

    fn launched(&self) -> i32 {
        self.launcher.launched.load(Ordering::SeqCst)
    }

    fn signals(&self) -> Vec<(i32, i32)> {
        self.launcher.signals.lock().unwrap().clone()
    }
}

fn body_of(o: Outcome) -> String {
    match o {
        Outcome::Ok { body, .. } => String::from_utf8(body).unwrap(),
        other => panic!("expected an answer, got {:?}", other.label()),
    }
}

const SIGTERM: i32 = paddock_sys::signal::SIGTERM;
const SIGKILL: i32 = paddock_sys::signal::SIGKILL;

#[tokio::test]
async fn requests_are_answered_with_their_own_replies() {
    let mut rig = Rig::new("");
    let first = rig.ready().await;
    assert_eq!(first.generation, 1);
    for i in 0..20 {
        assert_eq!(
            body_of(rig.call("echo", &format!("n{i}")).await),
            format!("n{i}")
        );
    }
    assert_eq!(rig.launched(), 1, "no worker was replaced");
}

#[tokio::test]
async fn a_request_past_its_deadline_is_answered_504_and_its_worker_replaced() {
    let mut rig = Rig::new("request_timeout = \"200ms\"");
    let first = rig.ready().await;
    let t = Instant::now();
    match rig.call("hang", "x").await {
        Outcome::DeadlineKilled { cause } => {
            assert_eq!(cause.request_timeout_ms, 200);
            assert_eq!(Some(cause.pid), first.pid);
        }
        other => panic!("expected a deadline kill, got {}", other.label()),
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "answered after {took:?}"
    );
    // The hung worker was SIGKILLed (not asked), and a new generation serves.
    assert!(rig.signals().contains(&(first.pid.unwrap(), SIGKILL)));
    let second = rig
        .until("replaced", |s| s.state == Phase::Ready && s.generation == 2)
        .await;
    assert_ne!(second.pid, first.pid);
    assert_eq!(body_of(rig.call("echo", "after").await), "after");
    assert_eq!(second.restarts, 1);
}

#[tokio::test]
async fn a_crash_with_a_request_in_flight_answers_502_naming_the_signal() {
    let mut rig = Rig::new("");
    let first = rig.ready().await;
    match rig.call("segv", "x").await {
        Outcome::Crashed {
            cause: CrashCause::Exit(d),
        } => {
            assert_eq!(d.signal.as_deref(), Some("SIGSEGV"));
            assert_eq!(Some(d.pid), first.pid);
            assert_eq!(d.workers_killed_by_this_request, 1);
        }
        other => panic!("expected a crash, got {}", other.label()),
    }
    // A crash while busy is the request's doing: replaced at once, no backoff.
    let second = rig
        .until("replaced", |s| s.state == Phase::Ready && s.generation == 2)
        .await;
    let exit = second.last_exit.expect("the crash is recorded");
    assert_eq!(exit.signal.as_deref(), Some("SIGSEGV"));
    assert!(!exit.requested);
    assert_eq!(body_of(rig.call("echo", "ok").await), "ok");
}

#[tokio::test]
async fn a_reply_to_another_request_id_is_a_protocol_violation() {
    let mut rig = Rig::new("");
    rig.ready().await;
    match rig.call("wrong_id", "x").await {
        Outcome::Crashed {
            cause: CrashCause::Violation(v),
        } => assert!(
            v.protocol_violation.contains("outstanding request"),
            "{}",
            v.protocol_violation
        ),
        other => panic!("expected a protocol violation, got {}", other.label()),
    }
    rig.until("replaced", |s| s.state == Phase::Ready && s.generation == 2)
        .await;
    assert_eq!(body_of(rig.call("echo", "ok").await), "ok");
}

#[tokio::test]
async fn max_requests_asks_the_coordinator_for_a_recycle_once() {
    let mut rig = Rig::new("max_requests = 3");
    rig.ready().await;
    let mut served = 0;
    let reason = loop {
        assert_eq!(body_of(rig.call("echo", "x").await), "x");
        served += 1;
        if let Ok(Ask::Recycle { reason, .. }) = rig.asks.try_recv() {
            break reason;
        }
        assert!(served < 3, "no recycle asked after {served} requests");
    };
    // max_requests less up to 10 % (of 3: nothing): exactly the third.
    assert_eq!(served, 3);
    assert!(reason.contains("max_requests"), "{reason}");
    // Asked once, not after every later request.
    assert_eq!(body_of(rig.call("echo", "y").await), "y");
    assert!(rig.asks.try_recv().is_err());
    assert_eq!(rig.launched(), 1, "the actor itself replaces nothing");
}

#[tokio::test]
async fn gpu_memory_over_max_gpu_memory_asks_for_a_recycle_with_the_devices_room() {
    let gib = 1u64 << 30;
    let device = |used| crate::gpu::Device {
        index: 0,
        name: "fake H100".into(),
        memory_total: 80 * gib,
        memory_used: used,
        utilization_percent: None,
    };
    // Room on the device for a second copy: the replacement may start first.
    for (used_on_device, room) in [(10 * gib, true), (79 * gib, false)] {
        let gpu = Arc::new(crate::gpu::fake::FakeGpus::with(vec![device(
            used_on_device,
        )]));
        let mut rig = Rig::with_gpu("devices = [0]\nmax_gpu_memory = \"4GiB\"", gpu.clone());
        let st = rig.ready().await;
        assert_eq!(st.device, Some(0), "the worker's status names its device");
        let pid = st.pid.unwrap();
        // Under the limit: nothing asked.
        gpu.memory.lock().unwrap().insert(pid, 3 * gib);
        assert_eq!(body_of(rig.call("echo", "x").await), "x");
        // Over it: one ask, naming the limit, with the device's room.
        gpu.memory.lock().unwrap().insert(pid, 6 * gib);
        let ask = tokio::time::timeout(LIMIT, rig.asks.recv()).await.unwrap();
        match ask {
            Some(Ask::Recycle {
                reason,
                room_for_two,
                ..
            }) => {
                assert!(
                    reason.contains("over max_gpu_memory (4096 MiB)"),
                    "{reason}"
                );
                assert_eq!(room_for_two, room, "device {used_on_device} bytes used");
            }
            _ => panic!("expected a recycle"),
        }
        assert!(rig.asks.try_recv().is_err(), "asked once");
    }
}

#[tokio::test]
async fn a_retired_worker_finishes_its_request_then_stops_for_good() {
    let mut rig = Rig::new("");
    let first = rig.ready().await;
    let answer = rig.send("slow", "drained");
    rig.until("busy", |s| s.state == Phase::Busy).await;
    rig.handle.commands.send(Command::Retire).unwrap();
    let outcome = tokio::time::timeout(LIMIT, answer).await.unwrap().unwrap();
    assert_eq!(body_of(outcome), "drained");
    rig.until("stopped", |s| s.state == Phase::Stopped).await;
    // Asked to stop (SIGTERM) only once its request was answered; never respawned.
    assert_eq!(rig.signals().first(), Some(&(first.pid.unwrap(), SIGTERM)));
    assert_eq!(rig.launched(), 1);
}

#[tokio::test]
async fn a_stop_while_idle_terminates_and_never_respawns() {
    let mut rig = Rig::new("");
    let first = rig.ready().await;
    rig.handle.commands.send(Command::Stop).unwrap();
    let last = rig.until("stopped", |s| s.state == Phase::Stopped).await;
    // SIGTERM first; after its exit, whatever is left of its group is SIGKILLed.
    let pid = first.pid.unwrap();
    assert_eq!(rig.signals(), vec![(pid, SIGTERM), (pid, SIGKILL)]);
    assert!(last.last_exit.is_some_and(|e| e.requested));
    assert_eq!(rig.launched(), 1);
    // Once stopped, the actor is gone: its command channel is closed.
    tokio::time::timeout(LIMIT, rig.handle.commands.closed())
        .await
        .expect("the actor ended");
}

#[tokio::test]
async fn a_batch_that_kills_its_worker_is_bisected_until_the_culprit_is_alone() {
    let mut rig = Rig::new("");
    rig.ready().await;
    // The worker is busy while four requests queue: it then takes them as one batch.
    let held = rig.send("slow", "held");
    rig.until("busy", |s| s.state == Phase::Busy).await;
    let answers: Vec<_> = ["a", "b", "segv", "d"]
        .into_iter()
        .map(|body| rig.send("upper", body))
        .collect();
    assert_eq!(
        body_of(tokio::time::timeout(LIMIT, held).await.unwrap().unwrap()),
        "held"
    );
    let mut outcomes = vec![];
    for a in answers {
        outcomes.push(tokio::time::timeout(LIMIT, a).await.unwrap().unwrap());
    }
    for (i, want) in [(0, "A"), (1, "B"), (3, "D")] {
        match &outcomes[i] {
            Outcome::Ok { body, .. } => assert_eq!(body, want.as_bytes()),
            other => panic!("request {i}: expected its answer, got {}", other.label()),
        }
    }
    match &outcomes[2] {
        Outcome::Crashed {
            cause: CrashCause::Exit(d),
        } => assert_eq!(d.signal.as_deref(), Some("SIGSEGV")),
        other => panic!("the culprit: expected a crash, got {}", other.label()),
    }
    // 4 → 2 → 1: three workers died (⌈log2 4⌉ + 1), and the fourth serves.
    let last = rig
        .until("ready again", |s| {
            s.state == Phase::Ready && s.generation == 4
        })
        .await;
    assert_eq!(last.restarts, 3);
    assert_eq!(rig.launched(), 4);
    let stats = rig.dispatcher.batch_stats();
    assert_eq!(stats["upper"].bisections, 2, "{stats:?}");
    assert_eq!(stats["upper"].max_size, 4);
}

#[tokio::test]
async fn a_batch_past_its_batch_timeout_answers_504_only_to_the_request_alone_at_fault() {
    let mut rig = Rig::new("batch = { upper = { batch_timeout = \"100ms\" } }");
    rig.ready().await;
    let held = rig.send("slow", "held");
    rig.until("busy", |s| s.state == Phase::Busy).await;
    let answers: Vec<_> = ["hang", "b"]
        .into_iter()
        .map(|body| rig.send("upper", body))
        .collect();
    body_of(tokio::time::timeout(LIMIT, held).await.unwrap().unwrap());
    let mut outcomes = vec![];
    for a in answers {
        outcomes.push(tokio::time::timeout(LIMIT, a).await.unwrap().unwrap());
    }
    assert!(
        matches!(outcomes[0], Outcome::DeadlineKilled { .. }),
        "the hung request: {}",
        outcomes[0].label()
    );
    assert_eq!(body_of(outcomes.pop().unwrap()), "B");
    // 2 → 1: two workers killed, each after batch_timeout, not request_timeout.
    assert_eq!(rig.launched(), 3);
}
