#!/usr/bin/env python3
"""Long-poll latency: how soon a client waiting on `GET /v1/jobs/{id}?wait=` learns
that its job finished, on the SQLite store.

    python3 bench/long_poll.py [--jobs 300] [--waiters 1]

Each round submits one job that sleeps 20 ms (bench/jobs.toml's `noop` service, 2
workers, handler `pause`) and at once waits for it with `?wait=30s` from `--waiters` clients. The latency is the
client's receipt of the answer (its wall clock, after the response is read) minus
the job's `finished_at`, which the store sets as it applies the finish, just before
the group's commit: so it covers the commit, the wake-up, the store read and the
HTTP answer. Both clocks are this machine's; `finished_at` has millisecond
resolution, so each figure is ±1 ms. Needs a release build (or PADDOCK_BIN).
"""
import argparse
import datetime
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python"))
from common import free_port, start_paddock  # noqa: E402

import paddock  # noqa: E402


def epoch_ms(rfc3339):
    t = datetime.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--waiters", type=int, default=1, help="clients waiting on each job")
    a = ap.parse_args()
    port = free_port()
    _, stop = start_paddock("jobs.toml", port)
    latencies = []
    lock = threading.Lock()
    try:
        clients = [paddock.Client(f"http://127.0.0.1:{port}") for _ in range(a.waiters)]
        submitter = paddock.Client(f"http://127.0.0.1:{port}")
        for _ in range(a.jobs):
            # 20 ms of work: the waiters are registered before it ends.
            job = submitter.submit("noop", handler="pause", json={"s": 0.02})

            def wait(c, job_id=job.id):
                v = c._job(job_id, 30)
                got = time.time() * 1000
                assert v["state"] == "done", v
                with lock:
                    latencies.append(got - epoch_ms(v["finished_at"]))

            ts = [threading.Thread(target=wait, args=(c,)) for c in clients]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
    finally:
        stop()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    print(f"{len(latencies)} waits ({a.jobs} jobs x {a.waiters} waiting clients), finish -> client, ms: "
          f"p50 {q[49]:.1f}, p90 {q[89]:.1f}, p99 {q[98]:.1f}, max {latencies[-1]:.1f}")


if __name__ == "__main__":
    main()
