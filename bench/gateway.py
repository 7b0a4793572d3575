#!/usr/bin/env python3
"""Gateway benchmark: paddock vs uvicorn + FastAPI, same workers, same load, one run.

    python3 bench/gateway.py [--duration 10] [--connections 32] [--workers 2] [--rounds 3] [--pin]

Needs: a release build (cargo build --release), wrk, and `pip install fastapi "uvicorn[standard]"`.
Both servers run for the whole benchmark; in each round the four loads run one at a
time, paddock then uvicorn, and each ratio compares two loads of the same round.
Prints requests/s, p50 and p99 latency for an echo handler and a 10 ms blocking
handler on both, the ratios, and the paddock daemon's CPU microseconds per request
and RSS under load (from /proc/PID/task/*/schedstat and /proc/PID/status).
"""
import argparse
import os
import re
import signal
import subprocess
import sys

from common import BENCH, PADDOCK, free_port, start_paddock, wait_port


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


def wrk(url, duration, connections, pin=()):
    out = subprocess.run(
        list(pin) + ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", os.path.join(BENCH, "post.lua"), url],
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


def start_uvicorn(args, port, pin):
    p = subprocess.Popen(
        pin + [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(args.workers), "--log-level", "warning", "--no-access-log"],
        cwd=BENCH, start_new_session=True,
    )
    wait_port(port)

    def stop():
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)
    return stop


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="must match bench/paddock.toml")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of the four loads, paddock and uvicorn alternating (the machine's "
                         "speed drifts; ratios are taken within a round)")
    ap.add_argument("--pin", action="store_true",
                    help="servers on CPU 1, wrk on CPU 0 (taskset): the load generator does not "
                         "compete with the server for CPU")
    args = ap.parse_args()
    server_pin = ["taskset", "-c", "1"] if args.pin else []
    load_pin = ["taskset", "-c", "0"] if args.pin else []
    pd_port, uv_port = free_port(), free_port()
    pid, stop_paddock = start_paddock("paddock.toml", pd_port, server_pin)
    stop_uvicorn = None
    rounds = []
    try:
        stop_uvicorn = start_uvicorn(args, uv_port, server_pin)
        pd_base, uv_base = f"http://127.0.0.1:{pd_port}/v1/bench", f"http://127.0.0.1:{uv_port}"
        urls = {"echo": (pd_base, uv_base + "/echo"), "sleep10": (pd_base + "/sleep10", uv_base + "/sleep10")}
        wrk(pd_base, 2, args.connections, load_pin)  # warm-up
        wrk(uv_base + "/echo", 2, args.connections, load_pin)
        for _ in range(args.rounds):
            r = {}
            for name, (pd_url, uv_url) in urls.items():
                t0 = cpu_ns(pid)
                pd = wrk(pd_url, args.duration, args.connections, load_pin)
                t1 = cpu_ns(pid)
                pd["daemon_us_per_req"] = (t1 - t0) / 1e3 / max(pd["total"], 1)
                pd["daemon_rss_kib"] = rss_kib(pid)
                r[name] = {"paddock": pd, "uvicorn": wrk(uv_url, args.duration, args.connections, load_pin)}
            rounds.append(r)
    finally:
        stop_paddock()
        if stop_uvicorn:
            stop_uvicorn()
    ideal = args.workers / 0.010
    print(f"{args.workers} workers each, wrk -t2 -c{args.connections} -d{args.duration}s, {os.cpu_count()} cores"
          + (", servers pinned to CPU 1 and wrk to CPU 0" if args.pin else ""))
    print(f"{'round':5} {'':8} {'':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
          f"{'ratio':>6} {'daemon us/req':>13} {'RSS MiB':>8}")
    for i, r in enumerate(rounds, 1):
        for name in ["echo", "sleep10"]:
            for who in ["paddock", "uvicorn"]:
                x = r[name][who]
                extra = ""
                if who == "paddock":
                    ratio = x["rps"] / r[name]["uvicorn"]["rps"]
                    extra = f"{ratio:5.2f}x {x['daemon_us_per_req']:13.1f} {x['daemon_rss_kib'] / 1024:8.1f}"
                print(f"{i:<5} {name:8} {who:8} {x['rps']:9.0f} {x['p50']:8.2f} {x['p99']:8.2f} "
                      f"{x['non2xx']:8d} {extra} {x['errors']}")
    def col(name, f):
        return [f(r[name]) for r in rounds]
    echo_ratio = col("echo", lambda x: x["paddock"]["rps"] / x["uvicorn"]["rps"])
    sleep_ratio = col("sleep10", lambda x: x["paddock"]["rps"] / x["uvicorn"]["rps"])
    sleep_ideal = col("sleep10", lambda x: x["paddock"]["rps"] / ideal * 100)
    echo_cpu = col("echo", lambda x: x["paddock"]["daemon_us_per_req"])
    sleep_cpu = col("sleep10", lambda x: x["paddock"]["daemon_us_per_req"])
    rss = [r[n]["paddock"]["daemon_rss_kib"] / 1024 for r in rounds for n in r]
    rng = lambda xs, fmt: f"median {fmt.format(median(xs))} (range {fmt.format(min(xs))} - {fmt.format(max(xs))})"
    print(f"echo throughput, paddock / uvicorn+FastAPI: {rng(echo_ratio, '{:.2f}x')}")
    print(f"sleep10 throughput, paddock / uvicorn+FastAPI: {rng(sleep_ratio, '{:.2f}x')}")
    print(f"sleep10 paddock vs ideal ({ideal:.0f} req/s): {rng(sleep_ideal, '{:.1f}%')}")
    print(f"paddock daemon CPU per request, echo: {rng(echo_cpu, '{:.1f} us')}")
    print(f"paddock daemon CPU per request, sleep10: {rng(sleep_cpu, '{:.1f} us')}")
    print(f"paddock daemon RSS under load: max {max(rss):.1f} MiB")


if __name__ == "__main__":
    main()
