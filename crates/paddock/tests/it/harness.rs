//! The test harness: a temp folder with a config, the real `paddock` binary, and a
//! guarantee that every process a test started is dead when the test ends.
//!
//! Waits are on events with deadlines (`wait_until`), never fixed sleeps.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_paddock");

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A free loopback port, chosen by the kernel.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns Some or `timeout` passes (then panics with `what`).
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The outcome of one CLI command.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Out {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A test environment: one temp folder, one config, one gateway port.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub extra_env: Vec<(String, String)>,
    /// Extra lines for the [instance] table written by `config`.
    pub instance_extra: String,
    /// A program (and its arguments) that runs paddock, e.g. `prlimit --nofile=...`.
    pub wrap: Vec<String>,
    daemons: std::cell::RefCell<Vec<i32>>,
}

impl Env {
    pub fn new() -> Env {
        // Short paths: the control socket lives in the state folder.
        let dir = tempfile::Builder::new()
            .prefix("pd")
            .tempdir_in("/tmp")
            .unwrap();
        Env {
            dir,
            port: free_port(),
            extra_env: vec![],
            instance_extra: String::new(),
            wrap: vec![],
            daemons: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("paddock.toml")
    }

    /// Writes a config: an [instance] with this env's state folder and port, then `services`.
    pub fn config(&self, services: &str) -> &Self {
        let text = format!(
            "[instance]\nname = \"t\"\nlisten = \"127.0.0.1:{}\"\nstate_dir = \"{}/state\"\n{}\n{services}",
            self.port,
            self.path().display(),
            self.instance_extra
        );
        std::fs::write(self.config_path(), text).unwrap();
        self
    }

    /// Writes the config file verbatim.
    pub fn raw_config(&self, text: &str) -> &Self {
        std::fs::write(self.config_path(), text).unwrap();
        self
    }

    /// A process service running the fake service with `flags` (`{port}` and
    /// `{dir}` are replaced), plus extra TOML lines.
    pub fn fake(&self, name: &str, flags: &str, extra: &str) -> String {
        let mut argv = vec!["python3".to_string(), fixture("fake_service.py")];
        argv.extend(
            flags
                .replace("{dir}", &self.path().display().to_string())
                .split_whitespace()
                .map(String::from),
        );
        argv.extend(["--tag".into(), self.path().display().to_string()]);
        let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
        format!(
            "[services.{name}]\nkind = \"process\"\ncommand = [{}]\n{extra}\n",
            argv.join(", ")
        )
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = match self.wrap.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        c.arg("-c").arg(self.config_path()).args(args);
        c.current_dir(self.path());
        c.env_remove("NOTIFY_SOCKET");
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs a CLI command to its end (bounded by `timeout`).
    pub fn run_with(&self, args: &[&str], timeout: Duration) -> Out {
        let mut c = self.command(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let t = Instant::now();
        let mut child = c.spawn().unwrap();
        let mut so = child.stdout.take().unwrap();
        let mut se = child.stderr.take().unwrap();
        let r1 = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        });
        let r2 = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = se.read_to_string(&mut s);
            s
        });
        let status = wait_until(timeout, &format!("paddock {args:?} to finish"), || {
            child.try_wait().unwrap()
        });
        let out = Out {
            code: status.code().unwrap_or(-1),
            stdout: r1.join().unwrap(),
            stderr: r2.join().unwrap(),
            took: t.elapsed(),
        };
        if let Some(info) = self.lock_info() {
            self.daemons
                .borrow_mut()
                .push(info["pid"].as_i64().unwrap() as i32);
        }
        out
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, Duration::from_secs(60))
    }

    /// `paddock start`, asserting success.
    pub fn start_ok(&self) -> Out {
        let out = self.run(&["start"]);
        assert_eq!(out.code, 0, "start failed: {out:?}");
        out
    }

    pub fn stop_ok(&self) -> Out {
        let out = self.run(&["stop"]);
        assert_eq!(out.code, 0, "stop failed: {out:?}");
        out
    }

    pub fn status(&self) -> Value {
        let out = self.run(&["status", "--json"]);
        assert_eq!(out.code, 0, "status failed: {out:?}");
        serde_json::from_str(&out.stdout).unwrap()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join(format!("state/t-{}", self.port))
    }

    /// The instance lock's contents: in `state_dir()`, or (for a config that names
    /// no state_dir, run with `XDG_STATE_HOME` in this folder) under `state/paddock/`.
    pub fn lock_info(&self) -> Option<Value> {
        let xdg = std::fs::read_dir(self.path().join("state/paddock"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("lock"));
        let s = std::iter::once(self.state_dir().join("lock"))
            .chain(xdg)
            .find_map(|p| std::fs::read_to_string(p).ok())?;
        serde_json::from_str(&s).ok()
    }

    pub fn daemon_pid(&self) -> i32 {
        self.lock_info().expect("a lock file")["pid"]
            .as_i64()
            .unwrap() as i32
    }

    /// GET a path on the gateway: (status code, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    /// The operator token, as `paddock token` prints it.
    pub fn operator_token(&self) -> String {
        let out = self.run(&["token"]);
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout.trim().to_string()
    }

    /// A request to an operator route (`/admin/...`), with the operator token.
    pub fn admin(&self, method: &str, path: &str) -> Resp {
        let auth = format!("Authorization: Bearer {}\r\n", self.operator_token());
        request(self.port, method, path, &auth, b"").unwrap()
    }

    /// Live (not zombie) processes this environment started: anything whose
    /// command line names this folder, and anything in a daemon's session.
    pub fn leftovers(&self) -> Vec<(i32, String)> {
        let tag = self.path().display().to_string();
        let daemons = self.daemons.borrow().clone();
        let me = std::process::id() as i32;
        procs()
            .into_iter()
            .filter(|p| p.pid != me && !p.zombie)
            .filter(|p| p.cmdline.contains(&tag) || (daemons.contains(&p.sid) && p.sid != my_sid()))
            .map(|p| (p.pid, p.cmdline))
            .collect()
    }

    /// After a failed `start`: nothing may be left at the moment it returned (no
    /// waiting), since a user reads exit 1 or 5 as "nothing is running".
    pub fn assert_nothing_left_now(&self) {
        let left = self.leftovers();
        assert!(
            left.is_empty(),
            "left running after a failed start: {left:?}"
        );
    }

    pub fn assert_nothing_left(&self) {
        let left = wait_until(Duration::from_secs(5), "no process left", || {
            let l = self.leftovers();
            if l.is_empty() { Some(l) } else { None }
        });
        assert!(left.is_empty());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for _ in 0..3 {
            let left = self.leftovers();
            if left.is_empty() {
                break;
            }
            for (pid, _) in left {
                kill(pid, 9);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// A process, through paddock-sys's process table (Linux /proc, macOS libproc).
#[derive(Debug)]
pub struct Proc {
    pub pid: i32,
    pub sid: i32,
    pub pgid: i32,
    pub zombie: bool,
    pub cmdline: String,
}

pub fn proc_info(pid: i32) -> Option<Proc> {
    let p = paddock_sys::procs::stat(pid)?;
    Some(Proc {
        pid,
        zombie: p.zombie,
        pgid: p.pgid,
        sid: p.sid,
        cmdline: paddock_sys::procs::cmdline(pid),
    })
}

pub fn procs() -> Vec<Proc> {
    paddock_sys::procs::all_processes()
        .into_iter()
        .filter_map(|p| proc_info(p.pid))
        .collect()
}

fn my_sid() -> i32 {
    proc_info(std::process::id() as i32)
        .map(|p| p.sid)
        .unwrap_or(0)
}

/// Whether `pid` is alive (zombies count as dead).
pub fn alive(pid: i32) -> bool {
    proc_info(pid).is_some_and(|p| !p.zombie)
}

/// Sends a signal to one process.
pub fn kill(pid: i32, sig: i32) {
    paddock_sys::signal::kill_pid(pid, sig);
}

/// Reads "PID [CHILDPID]" from a fake service's pidfile.
pub fn read_pids(path: &Path) -> Option<Vec<i32>> {
    let s = std::fs::read_to_string(path).ok()?;
    Some(
        s.split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect(),
    )
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// POST `body` to the gateway on `port`.
pub fn post(port: u16, path: &str, content_type: &str, body: &[u8]) -> std::io::Result<Resp> {
    post_with_headers(port, path, content_type, "", body)
}

/// POST with extra header lines (each ending in CRLF).
pub fn post_with_headers(
    port: u16,
    path: &str,
    content_type: &str,
    extra: &str,
    body: &[u8],
) -> std::io::Result<Resp> {
    request(
        port,
        "POST",
        path,
        &format!("Content-Type: {content_type}\r\n{extra}"),
        body,
    )
}

/// One HTTP/1.1 request (connection closed after it).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut buf = vec![];
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Resp {
        code,
        headers,
        body: buf[split + 4..].to_vec(),
    })
}

/// The Python with the tests' pinned packages (.ci/test makes .venv-test), or
/// `PADDOCK_TEST_PYTHON`; fails the test, saying how to get it, when `check` (Python
/// code, e.g. `import gunicorn`) does not run there.
pub fn test_python(check: &str) -> String {
    let venv = format!(
        "{}/../../.venv-test/bin/python3",
        env!("CARGO_MANIFEST_DIR")
    );
    let python = std::env::var("PADDOCK_TEST_PYTHON").unwrap_or(venv);
    let ok = Command::new(&python)
        .args(["-c", check])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{python} fails {check:?}: run .ci/test (it makes .venv-test from crates/paddock/tests/python/requirements*.txt), or set PADDOCK_TEST_PYTHON"
    );
    python
}

/// Runs a check script that prints one JSON line as its report; fails the test
/// with its output when it fails.
pub fn json_report(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the check printed no JSON report ({e}): {stdout}"))
}

/// POST a JSON value to a worker service's default handler.
pub fn call(port: u16, service: &str, body: &Value) -> Resp {
    post(
        port,
        &format!("/v1/{service}"),
        "application/json",
        body.to_string().as_bytes(),
    )
    .unwrap()
}

impl Env {
    /// A worker service running the fake worker (SDK-based), plus extra TOML lines.
    pub fn worker(&self, name: &str, extra: &str) -> String {
        self.worker_with(name, "fake_worker.py", &[], extra)
    }

    /// A worker service running fixture `file` with environment `env` (the SDK is
    /// always on its PYTHONPATH), plus extra TOML lines.
    pub fn worker_with(&self, name: &str, file: &str, env: &[(&str, &str)], extra: &str) -> String {
        let sdk = format!("{}/../../sdk/python", env!("CARGO_MANIFEST_DIR"));
        let mut vars = vec![format!("PYTHONPATH = {sdk:?}")];
        vars.extend(env.iter().map(|(k, v)| format!("{k} = {v:?}")));
        format!(
            "[services.{name}]\ncommand = [\"python3\", {:?}, \"--tag\", {:?}]\nenv = {{ {} }}\n{extra}\n",
            fixture(file),
            self.path().display().to_string(),
            vars.join(", ")
        )
    }

    /// The sum of the samples of `/metrics` whose line starts with `prefix` (a
    /// metric's name and the start of its labels).
    pub fn metric(&self, prefix: &str) -> f64 {
        let (_, text) = self.get("/metrics").unwrap();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The daemon's resident memory in KiB.
    pub fn daemon_rss_kib(&self) -> u64 {
        paddock_sys::procs::rss_bytes(self.daemon_pid()).expect("the daemon's memory") / 1024
    }
}

pub use crate::pg_server::PgServer;

/// Fails the test, with the program's stderr, unless it exited 0.
pub fn assert_ran(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Howard Hinnant's civil-from-days and days-from-civil, for the RFC 3339 times the
/// daemon writes (`2026-12-06T10:00:00.123Z`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// Milliseconds since the epoch of a time the daemon wrote (`…T10:00:00.123Z`).
pub fn epoch_ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let days = days_from_civil(n(0, 4), n(5, 7), n(8, 10));
    let ms = (s[17..23].parse::<f64>().unwrap() * 1000.0).round() as i64;
    (days * 86400 + n(11, 13) * 3600 + n(14, 16) * 60) * 1000 + ms
}

/// Now plus `d`, as RFC 3339 (UTC, whole seconds rounded up).
pub fn rfc3339_in(d: Duration) -> String {
    let t = std::time::SystemTime::now() + d;
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        .ceil() as i64;
    let (y, m, day) = civil_from_days(secs.div_euclid(86400));
    let rem = secs.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
