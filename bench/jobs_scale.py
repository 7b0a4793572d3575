#!/usr/bin/env python3
"""Jobs at scale: one million no-op jobs through paddock with a short job_retention,
in steady state, on the SQLite store and then on PostgreSQL, in one run.

    python3 bench/jobs_scale.py [--jobs 1000000] [--postgres-jobs N] [--retention 10s]
                                [--clients 16] [--backlog 5000] [--skip-sqlite]
                                [--postgres URL | --skip-postgres]

Clients enqueue over keep-alive HTTP, never more than --backlog jobs ahead of the
workers (so the queue does not grow without bound: what is measured is steady
state, not a flood). Every 5 s the script reads /metrics (jobs finished: pruned +
done + dead; the store's size) and the daemon's RSS, and prints a line; at the end,
jobs/s in the first and last tenth of the run, the largest store size, and RSS at
the start and the end.

Needs a release build (cargo build --release). Without --postgres the script
starts a throwaway server with .ci/postgres.sh (Debian's postgresql).
"""
import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time

from common import BENCH, ROOT, free_port, fresh_database, metric, postgres, scrape, start_paddock

CONFIG = """[instance]
name = "benchscale"
listen = "127.0.0.1:18711"
{store}
[services.noop]
command = ["python3", "{worker}"]
workers = 2
jobs_share = 1.0
job_retention = "{retention}"
env = {{ PYTHONPATH = "{sdk}" }}
"""


def metrics(port):
    text = scrape(port)

    def value(pattern):
        return metric(text, pattern)

    finished = (value(r'paddock_jobs_pruned_total\{service="noop"\}')
                + value(r'paddock_jobs\{service="noop",state="(?:done|dead|cancelled)"\}'))
    return {"finished": finished, "bytes": value(r"paddock_jobs_store_bytes"),
            "kept": value(r'paddock_jobs\{service="noop",state="[a-z]+"\}')}


def cpu_times():
    """(steal, total) jiffies of the machine: the hypervisor's share shows how much
    CPU this VM was denied in a window."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[7], sum(v)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(label, store, a):
    port = free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(CONFIG.format(store=store, worker=os.path.join(BENCH, "noop_worker.py"),
                            retention=a.retention, sdk=os.path.join(ROOT, "sdk", "python")))
    cfg.close()
    pid, stop = start_paddock(cfg.name, port)
    enqueued = [0]
    finished = [0.0]
    lock = threading.Lock()

    def client():
        c = http.client.HTTPConnection("127.0.0.1", port)
        while True:
            with lock:
                if enqueued[0] >= a.jobs:
                    return
                ahead = enqueued[0] - finished[0]
                if ahead < a.backlog:
                    enqueued[0] += 1
                    i = enqueued[0]
            if ahead >= a.backlog:
                time.sleep(0.01)  # a benchmark's client pacing, not a test's wait
                continue
            c.request("POST", "/v1/jobs/noop", body=json.dumps({"i": i}),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            body = r.read()
            assert r.status == 202, (r.status, body)

    rows = []
    try:
        t0 = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(a.clients)]
        for t in threads:
            t.start()
        last_t, last_f, last_cpu = t0, 0.0, cpu_times()
        print(f"{label}: {'t (s)':>6} {'finished':>9} {'jobs/s':>7} {'kept':>7} {'store MB':>9} {'RSS MB':>7} {'steal %':>7}")
        while True:
            time.sleep(0.5)
            m = metrics(port)
            with lock:
                finished[0] = m["finished"]
            now = time.monotonic()
            if now - last_t >= 5 or m["finished"] >= a.jobs:
                rate = (m["finished"] - last_f) / (now - last_t)
                cpu = cpu_times()
                steal = 100 * (cpu[0] - last_cpu[0]) / max(1, cpu[1] - last_cpu[1])
                row = {"t": now - t0, "finished": m["finished"], "rate": rate, "kept": m["kept"],
                       "mb": m["bytes"] / 1e6, "rss": rss_mb(pid), "steal": steal}
                rows.append(row)
                print(f"{label}: {row['t']:6.0f} {row['finished']:9.0f} {rate:7.0f} {row['kept']:7.0f} "
                      f"{row['mb']:9.1f} {row['rss']:7.1f} {steal:7.1f}", flush=True)
                last_t, last_f, last_cpu = now, m["finished"], cpu
            if m["finished"] >= a.jobs:
                break
        for t in threads:
            t.join()
        total = time.monotonic() - t0
    finally:
        stop()
        os.unlink(cfg.name)
    tenth = max(1, len(rows) // 10)
    full = [r for r in rows[:-1]] or rows  # the last window is partial
    first = sum(r["rate"] for r in full[:tenth]) / tenth
    last = sum(r["rate"] for r in full[-tenth:]) / tenth
    return {"label": label, "jobs": a.jobs, "total_s": total, "jobs_per_s": a.jobs / total,
            "first": first, "last": last, "max_mb": max(r["mb"] for r in rows),
            "end_mb": rows[-1]["mb"], "rss_start": rows[0]["rss"], "rss_end": rows[-1]["rss"],
            "rss_max": max(r["rss"] for r in rows),
            "steal": sum(r["steal"] for r in rows) / len(rows)}


def summary(s):
    return (f"{s['label']}: {s['jobs']} jobs in {s['total_s']:.0f} s ({s['jobs_per_s']:.0f} jobs/s); "
            f"first tenth {s['first']:.0f} jobs/s, last tenth {s['last']:.0f} jobs/s "
            f"({(s['last'] / max(s['first'], 1e-9) - 1) * 100:+.1f} %); store at most {s['max_mb']:.1f} MB "
            f"({s['end_mb']:.1f} MB at the end); daemon RSS {s['rss_start']:.1f} MB at the start, "
            f"{s['rss_end']:.1f} MB at the end, {s['rss_max']:.1f} MB at most; CPU steal {s['steal']:.0f} % on average")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--retention", default="10s")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--backlog", type=int, default=5000)
    ap.add_argument("--postgres-jobs", type=int, help="jobs for the PostgreSQL run (default: --jobs)")
    ap.add_argument("--postgres", help="a server's base URL, e.g. postgres://postgres@127.0.0.1:5432")
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--skip-sqlite", action="store_true")
    a = ap.parse_args()
    results = [] if a.skip_sqlite else [run("sqlite", "", a)]
    if not a.skip_postgres:
        with postgres(a.postgres) as base:
            store = fresh_database(base, "bench")
            pa = argparse.Namespace(**vars(a))
            pa.jobs = a.postgres_jobs or a.jobs
            results.append(run("postgres", f'store = "{store}"', pa))
    print()
    for s in results:
        print(summary(s))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
