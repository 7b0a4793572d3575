#!/usr/bin/env python3
"""Batching benchmark: paddock vs LitServe on the same batchable model, one run.

    python3 bench/batching.py [--duration 10] [--connections 32] [--rounds 3]

Needs: a release build (cargo build --release), wrk, and `pip install
litserve==0.2.19`. The model (bench/batch_worker.py for paddock,
bench/litserve_app.py for LitServe) costs 5 ms + 0.2 ms per item in time.sleep, one
call at a time per process, 2 processes each. LitServe: max_batch_size=16,
batch_timeout=5 ms, workers_per_device=2 on the CPU. paddock: @paddock.batch
(max_size=16), twice: with the default max_wait 0 (bench/batch.toml: batches form
only while workers are busy) and with max_wait 5 ms (bench/batch_wait.toml, LitServe's
batch_timeout). Each round runs the three with the same wrk command (32
connections), so the ratios compare loads of the same minute. The ideal is 2 workers × 16 items / 8.2 ms
≈ 3,900 req/s.
"""
import argparse
import glob
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from common import BENCH, free_port, start_paddock, wait_port

IDEAL = 2 * 16 / 0.0082


def to_ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, duration, connections):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
         "-s", os.path.join(BENCH, "post.lua"), url],
        capture_output=True, text=True, check=True).stdout
    p = lambda q: to_ms(*re.search(q + r"\s+([\d.]+)(us|ms|s)", out).groups())  # noqa: E731
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": p("50%"), "p99": p("99%"),
            "bad": int(non2xx.group(1)) if non2xx else 0}


def paddock_batches(port):
    """(batches, items) so far, from paddock's /metrics."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    get = lambda name: sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()  # noqa: E731
                           if l.startswith(name + "{"))
    return get("paddock_batch_size_count"), get("paddock_batch_items_total")


def run_paddock(args, config):
    port = free_port()
    _, stop = start_paddock(config, port)
    try:
        wrk(f"http://127.0.0.1:{port}/v1/model", 2, args.connections)  # warm up
        b0, i0 = paddock_batches(port)
        r = wrk(f"http://127.0.0.1:{port}/v1/model", args.duration, args.connections)
        b1, i1 = paddock_batches(port)
        r["batch"] = (i1 - i0) / (b1 - b0) if b1 > b0 else 0.0
        return r
    finally:
        stop()


def run_litserve(args):
    port = free_port()
    stats = tempfile.mkdtemp(prefix="lsb")
    p = subprocess.Popen([sys.executable, os.path.join(BENCH, "litserve_app.py"), str(port), stats],
                         cwd=BENCH, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=60)
        wrk(f"http://127.0.0.1:{port}/predict", 2, args.connections)  # warm up
        r = wrk(f"http://127.0.0.1:{port}/predict", args.duration, args.connections)
        batches = items = 0
        for f in glob.glob(os.path.join(stats, "*")):
            b, i = open(f).read().split()
            batches, items = batches + int(b), items + int(i)
        r["batch"] = items / batches if batches else 0.0
        return r
    finally:
        stop_group(p)
        shutil.rmtree(stats, ignore_errors=True)


def stop_group(p):
    """SIGTERM to the server's process group, SIGKILL after 5 s, and returns only when
    every process of the group is gone: LitServe 0.2.19 leaves a worker spinning at
    100 % CPU after SIGTERM, which would weigh on the next run."""
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 5
    while True:
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            os.killpg(p.pid, signal.SIGKILL)
        time.sleep(0.05)
    p.poll()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"batchable model (5 ms + 0.2 ms/item), 2 workers each, wrk -t2 -c{args.connections} "
          f"-d{args.duration}s, ideal {IDEAL:,.0f} req/s")
    print(f"{'round':<6}{'server':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}"
          f"{'batch':>7}{'ratio':>8}{'% ideal':>9}")
    ratios = {"paddock": [], "paddock-w5": []}
    for rnd in range(1, args.rounds + 1):
        runs = [("paddock", run_paddock(args, "batch.toml")),
                ("paddock-w5", run_paddock(args, "batch_wait.toml")),
                ("litserve", run_litserve(args))]
        ls = runs[-1][1]
        for name, r in runs:
            extra = " " * 8
            if name in ratios:
                ratios[name].append(r["rps"] / ls["rps"])
                extra = f"{ratios[name][-1]:>7.2f}x"
            print(f"{rnd:<6}{name:<12}{r['rps']:>9.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['bad']:>9}"
                  f"{r['batch']:>7.1f}{extra}{100 * r['rps'] / IDEAL:>8.1f}%")
        sys.stdout.flush()
    for name, rs in ratios.items():
        print(f"{name} / LitServe req/s: median {statistics.median(rs):.2f}x "
              f"(range {min(rs):.2f}x - {max(rs):.2f}x)")


if __name__ == "__main__":
    main()
