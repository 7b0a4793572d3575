"""What the benchmarks share: where things are, free ports, and a paddock instance
started with its own state directory (so a benchmark never touches the user's)."""
import contextlib
import glob
import http.client
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
# PADDOCK_BIN: another build to measure (e.g. a copy of an older one, side by side).
PADDOCK = os.environ.get("PADDOCK_BIN") or os.path.join(ROOT, "target", "release", "paddock")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


@contextlib.contextmanager
def postgres(base=None):
    """A PostgreSQL server's base URL: `base` when given, else a throwaway server
    started with .ci/postgres.sh (Debian's postgresql) and stopped on exit."""
    if base:
        yield base
        return
    out = subprocess.run(["bash", os.path.join(ROOT, ".ci", "postgres.sh")], check=True,
                         capture_output=True, text=True)
    folder = re.search(r"running in (\S+)", out.stderr).group(1)
    try:
        yield out.stdout.strip()
    finally:
        pgbin = sorted(os.listdir("/usr/lib/postgresql"))[-1]
        cmd = [f"/usr/lib/postgresql/{pgbin}/bin/pg_ctl", "-D", f"{folder}/data", "-m", "fast", "stop"]
        if os.getuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        subprocess.run(cmd, stdout=subprocess.DEVNULL)


def in_threads(n, clients, one, per_thread=lambda: None):
    """one(i, ctx) for i in range(n), from `clients` threads, each with its own
    ctx = per_thread() (e.g. a keep-alive connection); what they returned, in the
    order they finished."""
    lock = threading.Lock()
    counter = iter(range(n))
    out = []

    def worker():
        ctx = per_thread()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            r = one(i, ctx)
            with lock:
                out.append(r)

    ts = [threading.Thread(target=worker) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def scrape(port):
    """The daemon's /metrics text."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    return text


def metric(text, pattern):
    """The sum of the samples in `text` whose name and labels match `pattern`."""
    return sum(float(m.group(1)) for m in re.finditer(r"(?m)^" + pattern + r" (\S+)$", text))


def fresh_database(base, prefix):
    """A new, empty database on the server at `base` (named `prefix` and this
    process's pid); its URL."""
    db = f"{prefix}{os.getpid()}"
    subprocess.run(["psql", f"{base}/postgres", "-qc", f"CREATE DATABASE {db}"], check=True)
    return f"{base}/{db}"


def start_paddock(config, port, pin=()):
    """`paddock start` of bench/<config> on `port` (under `pin`, a command prefix such
    as taskset); returns (daemon pid, stop function). Exits if no release build."""
    if not os.path.exists(PADDOCK):
        raise SystemExit("build first: cargo build --release")
    cfg = os.path.join(BENCH, config)
    state = tempfile.mkdtemp(prefix="pdb")
    env = dict(os.environ, XDG_STATE_HOME=state)
    subprocess.run(list(pin) + [PADDOCK, "-c", cfg, "--port", str(port), "start"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    (lock,) = glob.glob(os.path.join(state, "paddock", f"*-{port}", "lock"))
    pid = int(re.search(r'"pid":(\d+)', open(lock).read()).group(1))

    def stop():
        subprocess.run([PADDOCK, "-c", cfg, "--port", str(port), "stop"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(state, ignore_errors=True)
    return pid, stop
