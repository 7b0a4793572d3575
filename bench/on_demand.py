#!/usr/bin/env python3
"""Models on demand, a "laptop" run: the repository's real examples — embeddings
(all-MiniLM-L6-v2), text to speech (espeak-ng) and search (FAISS) — as services that
load on the first request and unload when idle, under one memory budget smaller
than their sum, so that at most two fit at once.

    python3 bench/on_demand.py [--seconds 60] [--python .venv-test/bin/python3]

First each model is loaded and asked twice, alone, to learn what it holds (the
daemon samples each worker's memory every second); the budget is then set to their
sum less half the smallest, and requests go to a random service each (never the same
twice in a row) for --seconds. After each cold start a second, warm request measures
what the model itself takes to answer. It reports:

- per model: requests, cold starts, its load time (spawn to READY, as the daemon
  measured it), the wait for room (evicted workers to exit), the warm answer, and the
  cold-start overhead = (first answer − request sent) − (spawn to READY) − (the warm
  answer) − (the wait for room): what paddock adds to a model's own load and answer
  (target ≤ 20 ms);
- requests lost (any answer but 200: target 0);
- the workers' memory, sampled every 100 ms from /status, against the budget
  (target: never above it).

Needs a release build (cargo build --release), .venv-test (made by .ci/test) and
espeak-ng.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PADDOCK, ROOT, free_port  # noqa: E402

REQUESTS = {
    "embeddings": ("/v1/embeddings", {"input": ["paddock loads models on demand"], "model": "m"}),
    "tts": ("/v1/tts/speak", {"text": "loaded on demand"}),
    "search": ("/v1/search/search", {"id": 42, "k": 3}),
}


def config(port, state, python, budget):
    sdk = os.path.join(ROOT, "sdk", "python")
    ex = os.path.join(ROOT, "examples")
    lines = [
        "[instance]",
        'name = "laptop"',
        f'listen = "127.0.0.1:{port}"',
        f'state_dir = "{state}"',
    ]
    if budget:
        lines.append(f"memory_budget = {budget}")
    common = 'min_workers = 0\nmax_workers = 1\nidle_timeout = "5m"\nstartup_timeout = "120s"\nqueue_timeout = "120s"'
    lines += [
        "[services.embeddings]",
        f'command = ["{python}", "{ex}/embeddings/worker.py"]',
        f'env = {{ PYTHONPATH = "{sdk}:{ex}/embeddings", OMP_NUM_THREADS = "1" }}',
        common,
        "[services.tts]",
        f'command = ["{python}", "{ex}/tts/worker.py"]',
        f'env = {{ PYTHONPATH = "{sdk}" }}',
        common,
        "[services.search]",
        f'command = ["{python}", "{ex}/search/worker.py"]',
        f'env = {{ PYTHONPATH = "{sdk}", OMP_NUM_THREADS = "1" }}',
        common,
    ]
    return "\n".join(lines) + "\n"


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as r:
        return json.load(r)


def scaling(st, name):
    return next(s for s in st["services"] if s["name"] == name)["scaling"]


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=180) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def start(python, budget):
    port = free_port()
    state = tempfile.mkdtemp(prefix="pdod")
    cfg = os.path.join(state, "paddock.toml")
    with open(cfg, "w") as f:
        f.write(config(port, state, python, budget))
    run([PADDOCK, "-c", cfg, "start"])
    return port, lambda: subprocess.run([PADDOCK, "-c", cfg, "stop"], capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv-test", "bin", "python3"))
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if not os.path.exists(PADDOCK):
        raise SystemExit("build first: cargo build --release")

    # 1. What each model holds once it has answered (a budget far above it, so that
    # the daemon samples the workers' memory).
    port, stop = start(a.python, 1 << 40)
    try:
        for n, (path, body) in REQUESTS.items():
            assert post(port, path, body) == 200 and post(port, path, body) == 200, n
        time.sleep(2.5)  # two of the daemon's one-second memory samples
        peaks = {n: scaling(status(port), n)["memory_peak_bytes"] for n in REQUESTS}
    finally:
        stop()
    budget = sum(peaks.values()) - min(peaks.values()) // 2
    print("each model alone: " + ", ".join(f"{n} {p / 2**20:.0f} MiB" for n, p in peaks.items())
          + f"; budget {budget / 2**20:.0f} MiB (their sum less half the smallest)", flush=True)

    # 2. Requests to a random model each, under the budget.
    port, stop = start(a.python, budget)
    samples = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            st = status(port)
            loaded = [s["name"] for s in st["services"] if s["scaling"]["loaded"]]
            samples.append((time.monotonic(), st["instance"]["memory"]["used_bytes"], loaded))
            time.sleep(0.1)  # the sampling period

    t = threading.Thread(target=sample)
    t.start()
    rng = random.Random(a.seed)
    per = {n: {"requests": 0, "lost": 0, "cold": [], "load_ms": [], "wait_ms": [], "warm_ms": [],
               "overhead_ms": []} for n in REQUESTS}
    t0 = time.monotonic()
    last = None
    try:
        while time.monotonic() - t0 < a.seconds:
            name = rng.choice([n for n in REQUESTS if n != last])
            last = name
            before = scaling(status(port), name)
            path, body = REQUESTS[name]
            sent = time.monotonic()
            code = post(port, path, body)
            took_ms = (time.monotonic() - sent) * 1000
            after = scaling(status(port), name)
            p = per[name]
            p["requests"] += 1
            if code != 200:
                p["lost"] += 1
            if after["cold_starts"] > before["cold_starts"]:
                load = after["last_cold_start_ms"]
                wait = after["last_cold_start_wait_ms"] or 0
                sent = time.monotonic()
                code = post(port, path, body)
                warm = (time.monotonic() - sent) * 1000
                p["requests"] += 1
                if code != 200:
                    p["lost"] += 1
                p["cold"].append(took_ms)
                p["load_ms"].append(load)
                p["wait_ms"].append(wait)
                p["warm_ms"].append(warm)
                p["overhead_ms"].append(took_ms - load - wait - warm)
    finally:
        done.set()
        t.join()
        stop()

    most = max(u for _, u, _ in samples)
    print("memory over time (each 10 s: the most the workers held, and the models loaded then):")
    for k in range(int(a.seconds // 10) + 1):
        window = [(u, l) for t, u, l in samples if k * 10 <= t - t0 < (k + 1) * 10]
        if window:
            u, l = max(window)
            print(f"  {k * 10:3d}-{k * 10 + 10:3d} s: {u / 2**20:4.0f} MiB ({', '.join(l) or 'none'})")
    most_loaded = max(len(l) for _, _, l in samples)
    print(f"\n{a.seconds:.0f} s, {sum(p['requests'] for p in per.values())} requests, "
          f"{len(samples)} memory samples: workers held at most {most / 2**20:.0f} MiB of the "
          f"{budget / 2**20:.0f} MiB budget ({'within' if most <= budget else 'OVER'}); "
          f"at most {most_loaded} models loaded at once")
    print("\n| model | holds | requests | lost | cold starts | first answer | load (spawn→READY) | wait for room | warm answer | overhead median | p95 | max |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    overheads = []
    for n, p in per.items():
        overheads += p["overhead_ms"]
        if not p["cold"]:
            print(f"| {n} | {peaks[n] / 2**20:.0f} MiB | {p['requests']} | {p['lost']} | 0 | - | - | - | - | - | - | - |")
            continue
        oh = sorted(p["overhead_ms"])
        p95 = oh[min(len(oh) - 1, int(len(oh) * 0.95))]
        med = lambda k: statistics.median(p[k])  # noqa: E731
        print(f"| {n} | {peaks[n] / 2**20:.0f} MiB | {p['requests']} | {p['lost']} | {len(p['cold'])} | "
              f"{statistics.median(p['cold']):.0f} ms | {med('load_ms'):.0f} ms | {med('wait_ms'):.0f} ms | "
              f"{med('warm_ms'):.1f} ms | {statistics.median(oh):.1f} ms | {p95:.1f} ms | {max(oh):.1f} ms |")
    lost = sum(p["lost"] for p in per.values())
    if overheads:
        print(f"\nall cold starts: overhead median {statistics.median(overheads):.1f} ms, "
              f"max {max(overheads):.1f} ms (target ≤ 20 ms); requests lost: {lost}")
    print("(medians over the model's cold starts; load times are whole milliseconds)")
    print(json.dumps({"budget": budget, "peaks": peaks, "max_used": most, "max_loaded": most_loaded,
                      "per_model": per}), file=open(os.path.join(tempfile.gettempdir(), "on_demand.json"), "w"))


if __name__ == "__main__":
    main()
