#!/usr/bin/env python3
"""Gateway benchmark: paddock vs uvicorn + FastAPI, same workers, same load, one run.

    python3 bench/gateway.py [--duration 10] [--connections 32] [--workers 2]

Needs: a release build (cargo build --release), wrk, and `pip install fastapi uvicorn`.
Prints requests/s, p50 and p99 latency for an echo handler and a 10 ms blocking
handler on both, the ratios, and the paddock daemon's CPU microseconds per request
and RSS under load (from /proc/PID/task/*/schedstat and /proc/PID/status).
"""
import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
PADDOCK = os.path.join(ROOT, "target", "release", "paddock")


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


def cpu_ns(pid):
    """CPU time of every thread of pid, in ns, from schedstat (exact, unlike the
    10 ms ticks of /proc/PID/stat, which misattribute timer-aligned wake-ups)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except OSError:
            pass
    return total


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def to_ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, duration, connections):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", os.path.join(BENCH, "post.lua"), url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps, "total": total,
        "p50": to_ms(*p50.groups()), "p99": to_ms(*p99.groups()),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": errors.group(1) if errors else "",
    }


def run_paddock(args, port):
    env = dict(os.environ)
    cfg = os.path.join(BENCH, "paddock.toml")
    state = tempfile.mkdtemp(prefix="pdb")
    env["XDG_STATE_HOME"] = state
    subprocess.run([PADDOCK, "-c", cfg, "--port", str(port), "start"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    pid = int(re.search(r'"pid":(\d+)', open(os.path.join(state, "paddock", f"bench-{port}", "lock")).read()).group(1))
    results = {}
    try:
        base = f"http://127.0.0.1:{port}/v1/bench"
        wrk(base, 2, args.connections)  # warm-up
        for name, url in [("echo", base), ("sleep10", base + "/sleep10")]:
            t0 = cpu_ns(pid)
            r = wrk(url, args.duration, args.connections)
            t1 = cpu_ns(pid)
            r["daemon_us_per_req"] = (t1 - t0) / 1e3 / max(r["total"], 1)
            r["daemon_rss_kib"] = rss_kib(pid)
            results[name] = r
    finally:
        subprocess.run([PADDOCK, "-c", cfg, "--port", str(port), "stop"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(state, ignore_errors=True)
    return results


def run_uvicorn(args, port):
    p = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(args.workers), "--log-level", "warning", "--no-access-log"],
        cwd=BENCH, start_new_session=True,
    )
    try:
        wait_port(port)
        base = f"http://127.0.0.1:{port}"
        wrk(base + "/echo", 2, args.connections)  # warm-up
        return {"echo": wrk(base + "/echo", args.duration, args.connections),
                "sleep10": wrk(base + "/sleep10", args.duration, args.connections)}
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="must match bench/paddock.toml")
    args = ap.parse_args()
    if not os.path.exists(PADDOCK):
        raise SystemExit("build first: cargo build --release")
    pd = run_paddock(args, free_port())
    uv = run_uvicorn(args, free_port())
    ideal = args.workers / 0.010
    print(f"{args.workers} workers each, wrk -t2 -c{args.connections} -d{args.duration}s, {os.cpu_count()} cores")
    print(f"{'':10} {'':8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name in ["echo", "sleep10"]:
        for who, r in [("paddock", pd[name]), ("uvicorn", uv[name])]:
            print(f"{name:10} {who:8} {r['rps']:10.0f} {r['p50']:8.2f} {r['p99']:8.2f} {r['non2xx']:8d} {r['errors']}")
    print(f"echo throughput, paddock / uvicorn+FastAPI: {pd['echo']['rps'] / uv['echo']['rps']:.2f}x")
    print(f"sleep10 throughput, paddock / uvicorn+FastAPI: {pd['sleep10']['rps'] / uv['sleep10']['rps']:.2f}x")
    print(f"sleep10 paddock vs ideal ({ideal:.0f} req/s): {pd['sleep10']['rps'] / ideal * 100:.1f}%")
    for name in ["echo", "sleep10"]:
        print(f"paddock daemon during {name}: {pd[name]['daemon_us_per_req']:.1f} CPU us/request, "
              f"RSS {pd[name]['daemon_rss_kib'] / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
