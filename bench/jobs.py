#!/usr/bin/env python3
"""Jobs benchmark: N no-op jobs end to end — enqueue over HTTP, run on 2 workers,
result committed — on paddock's SQLite store, and on Celery 5 + Redis, in one run.

    python3 bench/jobs.py [--jobs 5000] [--clients 16] [--skip-celery] [--client]
                          [--postgres [URL]] [--postgres-jobs N] [--celery-jobs N] [--skip-sqlite]

With `--client`, each side is driven through its own Python client, as its users
would: `paddock.Client().submit()` from the client threads, then `job.result()` for
every job in turn (the daemon's long-poll), against Celery's `.delay()` from the
same number of threads, then `.get()` for every result in turn.

With `--postgres`, paddock also runs on the PostgreSQL store (a throwaway server
from .ci/postgres.sh unless a base URL is given), in the same run. The job counts
of each side can differ (`--postgres-jobs`, `--celery-jobs`), so that each side
runs for about as long (the issue's bar: runs of at least 60 s).

Needs a release build; for the Celery side `pip install celery redis` and a
`redis-server` binary (Debian: apt-get install redis-server).
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


from common import BENCH, ROOT, free_port, fresh_database, in_threads, metric, postgres, scrape, start_paddock


def post_many(port, n, clients):
    """Enqueue n jobs from `clients` threads over keep-alive connections; their ids."""
    def one(i, c):
        c.request("POST", "/v1/jobs/noop", body=json.dumps({"i": i}), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        body = r.read()
        assert r.status == 202, (r.status, body)
        return json.loads(body)["id"]

    return in_threads(n, clients, one, lambda: http.client.HTTPConnection("127.0.0.1", port))


def count_done(port):
    """Jobs done, from /metrics (the store's own count)."""
    return metric(scrape(port), r'paddock_jobs\{service="noop",state="done"\}')


def postgres_config(base):
    """bench/jobs.toml on the PostgreSQL store at `base` (a fresh database)."""
    store = fresh_database(base, "benchjobs")
    tmp = tempfile.mkdtemp(prefix="pdjobs")
    path = os.path.join(tmp, "jobs.toml")
    with open(path, "w") as f:
        f.write(f"""[instance]
name = "benchjobspg"
store = "{store}"
[services.noop]
command = ["python3", "{os.path.join(BENCH, 'noop_worker.py')}"]
workers = 2
jobs_share = 1.0
env = {{ PYTHONPATH = "{os.path.join(ROOT, 'sdk', 'python')}" }}
""")
    return path


def run_paddock(n, clients, config="jobs.toml"):
    port = free_port()
    _, stop = start_paddock(config, port)
    try:
        t0 = time.monotonic()
        post_many(port, n, clients)
        t_enq = time.monotonic() - t0
        while count_done(port) < n:
            time.sleep(0.2)
        total = time.monotonic() - t0
        return {"n": n, "enqueue_s": t_enq, "total_s": total, "jobs_per_s": n / total}
    finally:
        stop()


CELERY_APP = '''
from celery import Celery
app = Celery("bench", broker="redis://127.0.0.1:{port}/0", backend="redis://127.0.0.1:{port}/1")
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = 4

@app.task
def noop(i):
    return "ok"
'''


def run_paddock_client(n, clients):
    """submit from `clients` threads, then result() of each, through paddock.Client."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python"))
    import paddock

    port = free_port()
    _, stop = start_paddock("jobs.toml", port)
    try:
        client = paddock.Client(f"http://127.0.0.1:{port}")
        t0 = time.monotonic()
        jobs = in_threads(n, clients, lambda i, _: client.submit("noop", json={"i": i}))
        t_enq = time.monotonic() - t0
        for job in jobs:
            assert job.result(timeout=120) == b"ok"
        total = time.monotonic() - t0
        return {"n": n, "enqueue_s": t_enq, "total_s": total, "jobs_per_s": n / total,
                "requests": client.requests}
    finally:
        stop()


def run_celery(n, clients):
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="cel")
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "yes", "--appendfsync", "everysec", "--dir", tmp],
                             stdout=subprocess.DEVNULL, start_new_session=True)
    with open(os.path.join(tmp, "celery_bench.py"), "w") as f:
        f.write(CELERY_APP.format(port=port))
    worker = None
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "celery_bench", "worker", "-c", "2",
                                   "-P", "prefork", "--loglevel", "warning"], cwd=tmp, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sys.path.insert(0, tmp)
        import celery_bench  # noqa: E402
        celery_bench.app.control.ping(timeout=10)
        t0 = time.monotonic()
        results = in_threads(n, clients, lambda i, _: celery_bench.noop.delay(i))
        t_enq = time.monotonic() - t0
        for r in results:
            assert r.get(timeout=120) == "ok"
        total = time.monotonic() - t0
        return {"n": n, "enqueue_s": t_enq, "total_s": total, "jobs_per_s": n / total}
    finally:
        if worker:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        os.killpg(redis.pid, signal.SIGTERM)
        redis.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--skip-celery", action="store_true")
    ap.add_argument("--client", action="store_true",
                    help="drive paddock through paddock.Client (submit + result)")
    ap.add_argument("--postgres", nargs="?", const="", default=None,
                    help="also run on the PostgreSQL store (a server's base URL, or a throwaway one)")
    ap.add_argument("--postgres-jobs", type=int, help="jobs for the PostgreSQL side (default: --jobs)")
    ap.add_argument("--celery-jobs", type=int, help="jobs for the Celery side (default: --jobs)")
    ap.add_argument("--skip-sqlite", action="store_true")
    a = ap.parse_args()
    pg = None
    if a.postgres is not None:
        with postgres(a.postgres or None) as base:
            pg = run_paddock(a.postgres_jobs or a.jobs, a.clients, postgres_config(base))
            print(f"paddock (PostgreSQL): {pg['n']} no-op jobs in {pg['total_s']:.2f}s "
                  f"(enqueued in {pg['enqueue_s']:.2f}s): {pg['jobs_per_s']:.0f} jobs/s end to end", flush=True)
    pd = None
    if a.skip_sqlite:
        pass
    elif a.client:
        pd = run_paddock_client(a.jobs, a.clients)
        print(f"paddock (SQLite) through paddock.Client, submit + result: {pd['n']} no-op jobs in "
              f"{pd['total_s']:.2f}s (submitted in {pd['enqueue_s']:.2f}s, {pd['requests']} requests): "
              f"{pd['jobs_per_s']:.0f} jobs/s end to end")
    else:
        pd = run_paddock(a.jobs, a.clients)
        print(f"paddock (SQLite, synchronous=FULL): {pd['n']} no-op jobs in {pd['total_s']:.2f}s "
              f"(enqueued in {pd['enqueue_s']:.2f}s): {pd['jobs_per_s']:.0f} jobs/s end to end", flush=True)
    if not a.skip_celery:
        ce = run_celery(a.celery_jobs or a.jobs, a.clients)
        print(f"celery 5 + redis (prefork -c 2, acks_late), delay + get: {ce['n']} no-op jobs in {ce['total_s']:.2f}s "
              f"(enqueued in {ce['enqueue_s']:.2f}s): {ce['jobs_per_s']:.0f} jobs/s end to end")
        if pd:
            print(f"paddock (SQLite) / celery: {pd['jobs_per_s'] / ce['jobs_per_s']:.2f}x")
        if pg:
            print(f"paddock (PostgreSQL) / celery: {pg['jobs_per_s'] / ce['jobs_per_s']:.2f}x")


if __name__ == "__main__":
    main()
