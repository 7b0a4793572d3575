#!/usr/bin/env python3
"""Streaming benchmark: paddock vs LitServe 0.2.19 on the same generators, one run.

    python3 bench/streaming.py [--requests 20] [--rounds 3]

Needs: a release build (cargo build --release), curl, and `pip install
litserve==0.2.19`. Two generators, the same on both sides: `fast` yields 1,000
chunks of 13 bytes as fast as it can; `slow` sleeps 20 ms before each of 50 chunks
(a model making tokens). 2 workers each. The client is curl -N (compiled, so it is
not the limit), one request at a time; chunks/s = chunks / curl's time to the last
byte. The time to the first chunk is measured apart, from sending the request to the
first byte of the body (not of the headers, which a server may send before its
generator made anything), with a plain socket. For paddock, the
daemon's CPU time (utime + stime from /proc) over all the fast requests of a round
gives its CPU per chunk. Each round runs paddock then LitServe.
"""
import argparse
import os
import statistics
import subprocess
import sys

from batching import stop_group
from common import BENCH, free_port, start_paddock, wait_port

FAST_N, SLOW_N = 1000, 50


def curl(url, body):
    out = subprocess.run(
        ["curl", "-sN", "-o", "/dev/null", "-H", "Content-Type: application/json",
         "-d", body, "-w", "%{http_code} %{time_starttransfer} %{time_total} %{size_download}", url],
        capture_output=True, text=True, check=True).stdout.split()
    code, first, total, size = int(out[0]), float(out[1]), float(out[2]), int(out[3])
    if code != 200:
        raise SystemExit(f"{url}: HTTP {code}")
    return first, total, size


def first_chunk_ms(url, body):
    """Milliseconds from sending the request to the first byte of the body (not the
    headers: a server may send those before the generator has made anything)."""
    import socket
    import time
    from urllib.parse import urlparse
    u = urlparse(url)
    s = socket.create_connection((u.hostname, u.port))
    req = (f"POST {u.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}").encode()
    t = time.perf_counter()
    s.sendall(req)
    buf = b""
    while True:
        data = s.recv(65536)
        if not data:
            raise SystemExit(f"{url}: closed before the body")
        buf += data
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            # chunked: "size\r\n" then data; the first data byte is what counts
            line, sep2, data = rest.partition(b"\r\n")
            if sep2 and data:
                ms = (time.perf_counter() - t) * 1000
                s.close()
                return ms


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def measure(url_fast, url_slow, body_fast, body_slow, n, pid=None):
    curl(url_fast, body_fast)  # warm up
    t0 = cpu_ticks(pid) if pid else 0
    fast = [curl(url_fast, body_fast) for _ in range(n)]
    t1 = cpu_ticks(pid) if pid else 0
    slow = [curl(url_slow, body_slow) for _ in range(max(3, n // 4))]
    med = statistics.median
    res = {
        "fast_first_ms": med(first_chunk_ms(url_fast, body_fast) for _ in range(n)),
        "fast_cps": med(FAST_N / t for _, t, _ in fast),
        "fast_bytes": fast[0][2],
        "slow_first_ms": med(first_chunk_ms(url_slow, body_slow) for _ in range(max(3, n // 4))),
        "slow_cps": med(SLOW_N / t for _, t, _ in slow),
    }
    if pid:
        hz = os.sysconf("SC_CLK_TCK")
        res["cpu_us_per_chunk"] = (t1 - t0) / hz * 1e6 / (n * FAST_N)
    return res


def run_paddock(args):
    port = free_port()
    pid, stop = start_paddock("stream.toml", port)
    try:
        base = f"http://127.0.0.1:{port}/v1/gen"
        return measure(f"{base}/fast", f"{base}/slow", f'{{"n": {FAST_N}}}', f'{{"n": {SLOW_N}}}',
                       args.requests, pid)
    finally:
        stop()


def run_litserve(args):
    port = free_port()
    p = subprocess.Popen([sys.executable, os.path.join(BENCH, "litserve_stream_app.py"), str(port)],
                         cwd=BENCH, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=60)
        url = f"http://127.0.0.1:{port}/predict"
        return measure(url, url, f'{{"n": {FAST_N}}}', f'{{"n": {SLOW_N}, "mode": "slow"}}',
                       args.requests)
    finally:
        stop_group(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"fast: {FAST_N} chunks as fast as possible; slow: {SLOW_N} chunks, 20 ms apart; "
          f"curl -N, {args.requests} requests each (medians)")
    print(f"{'round':<6}{'server':<10}{'fast 1st ms':>12}{'fast chunks/s':>15}{'slow 1st ms':>12}"
          f"{'slow chunks/s':>15}{'daemon us/chunk':>17}")
    ratios = []
    for rnd in range(1, args.rounds + 1):
        pd = run_paddock(args)
        ls = run_litserve(args)
        ratios.append(pd["fast_cps"] / ls["fast_cps"])
        for name, r in (("paddock", pd), ("litserve", ls)):
            cpu = f"{r['cpu_us_per_chunk']:>17.2f}" if "cpu_us_per_chunk" in r else " " * 17
            print(f"{rnd:<6}{name:<10}{r['fast_first_ms']:>12.2f}{r['fast_cps']:>15,.0f}"
                  f"{r['slow_first_ms']:>12.2f}{r['slow_cps']:>15.1f}{cpu}")
        sys.stdout.flush()
    print(f"fast chunks/s, paddock / LitServe: median {statistics.median(ratios):.1f}x "
          f"(range {min(ratios):.1f}x - {max(ratios):.1f}x)")


if __name__ == "__main__":
    main()
