#!/usr/bin/env python3
"""Embeddings benchmark: examples/embeddings (all-MiniLM-L6-v2 in numpy) on 2 workers,
batched and unbatched, against the same model behind uvicorn + FastAPI with 2
workers, in one run.

    python3 bench/embeddings.py [--duration 10] [--rounds 1]

Needs: a release build, wrk, and .venv-test (bash .ci/test) with `pip install fastapi
"uvicorn[standard]"` in it. Each request embeds one short sentence (bench/embed.lua),
so embeddings/s = requests/s. Concurrency 1, 8 and 32 connections. paddock batched:
bench/embed_batched.toml (the worker's @paddock.batch(max_size=32), max_wait 0);
unbatched: bench/embed_unbatched.toml (the same worker with max_size = 1).
"""
import argparse
import os
import re
import signal
import subprocess
import sys

from batching import stop_group
from common import BENCH, ROOT, free_port, start_paddock, wait_port

VENV_PYTHON = os.path.join(ROOT, ".venv-test", "bin", "python3")


def to_ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, duration, connections):
    out = subprocess.run(
        ["wrk", "-t1" if connections == 1 else "-t2", f"-c{connections}", f"-d{duration}s",
         "--latency", "-s", os.path.join(BENCH, "embed.lua"), url],
        capture_output=True, text=True, check=True).stdout
    p = lambda q: to_ms(*re.search(q + r"\s+([\d.]+)(us|ms|s)", out).groups())  # noqa: E731
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": p("50%"), "p99": p("99%"), "bad": int(non2xx.group(1)) if non2xx else 0}


def run_paddock(config, args):
    port = free_port()
    _, stop = start_paddock(config, port)
    try:
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        wrk(url, 2, 8)  # warm up
        return {c: wrk(url, args.duration, c) for c in (1, 8, 32)}
    finally:
        stop()


def run_fastapi(args):
    port = free_port()
    p = subprocess.Popen([VENV_PYTHON, "-m", "uvicorn", "embed_fastapi:app", "--host", "127.0.0.1",
                          "--port", str(port), "--workers", "2", "--log-level", "warning",
                          "--no-access-log"],
                         cwd=BENCH, start_new_session=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                                  MKL_NUM_THREADS="1"))
    try:
        wait_port(port, timeout=60)
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        wrk(url, 2, 8)
        return {c: wrk(url, args.duration, c) for c in (1, 8, 32)}
    finally:
        stop_group(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    print("examples/embeddings, 2 workers each; one sentence per request")
    print(f"{'round':<6}{'server':<20}{'conc':>5}{'emb/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for rnd in range(1, args.rounds + 1):
        for name, res in (("paddock batched", run_paddock("embed_batched.toml", args)),
                          ("paddock unbatched", run_paddock("embed_unbatched.toml", args)),
                          ("uvicorn+FastAPI", run_fastapi(args))):
            for c, r in res.items():
                print(f"{rnd:<6}{name:<20}{c:>5}{r['rps']:>9.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}"
                      f"{r['bad']:>9}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
