"""`paddock.wait` and `paddock.as_completed`: many jobs at once, in the manner of
`concurrent.futures`.

Jobs are watched by the daemon's long-poll on at most `MAX_THREADS` threads, each
with its share of the jobs: a thread with one job waits on it for up to a minute at
a time; a thread with several goes round them with short waits, so that every job
is looked at within a second or so however many there are. A finished job is
reported at once. The threads are daemon threads that end at their next wait's end
once the caller has what it asked for: a script is never held at exit.
"""

import queue
import threading
import time

from ._client import LONG_POLL_MAX
from ._client_errors import ClientError, JobTimeout

FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"
MAX_THREADS = 32
ROUND_WAIT = 0.5  # seconds a thread with several jobs waits on each in turn


def _failed(job):
    return job.state in ("dead", "cancelled")


def _watch(jobs, deadline, stop, out):
    """Starts the threads; each finished job (or an error) goes to `out`."""
    shares = [jobs[i::MAX_THREADS] for i in range(min(MAX_THREADS, len(jobs)))]

    def run(share):
        left = list(share)
        while left and not stop.is_set():
            for job in list(left):
                if stop.is_set():
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                wait = LONG_POLL_MAX if len(left) == 1 else ROUND_WAIT
                if remaining is not None:
                    wait = min(wait, remaining)
                try:
                    job.status(wait=wait)
                except ClientError as e:
                    out.put(e)
                    return
                if job.done():
                    left.remove(job)
                    out.put(job)

    for share in shares:
        threading.Thread(target=run, args=(share,), daemon=True,
                         name="paddock-wait").start()


def _unique(jobs):
    seen, out = set(), []
    for j in jobs:
        if id(j) not in seen:
            seen.add(id(j))
            out.append(j)
    return out


def wait(jobs, timeout=None, return_when=ALL_COMPLETED):
    """Waits for `jobs` (`paddock.Job`s): (done, not_done), two sets. `return_when` is
    FIRST_COMPLETED, FIRST_EXCEPTION (a dead or cancelled job) or ALL_COMPLETED; after
    `timeout` seconds it returns what it has (it never raises for the timeout). A
    failure to reach the daemon is raised."""
    jobs = _unique(jobs)

    def enough(done):
        if return_when == FIRST_COMPLETED and done:
            return True
        if return_when == FIRST_EXCEPTION and any(_failed(j) for j in done):
            return True
        return len(done) == len(jobs)

    done = {j for j in jobs if j.done()}
    if enough(done):
        return done, set(jobs) - done
    deadline = None if timeout is None else time.monotonic() + timeout
    stop, out = threading.Event(), queue.Queue()
    _watch([j for j in jobs if j not in done], deadline, stop, out)
    try:
        while not enough(done):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                item = out.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(item, ClientError):
                raise item
            done.add(item)
    finally:
        stop.set()
    return done, set(jobs) - done


def as_completed(jobs, timeout=None):
    """Yields `jobs` as they finish (done, dead or cancelled). Raises `JobTimeout` when
    `timeout` seconds pass first, and a failure to reach the daemon as it comes."""
    jobs = _unique(jobs)
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = []
    for j in jobs:
        if j.done():
            yield j
        else:
            pending.append(j)
    if not pending:
        return
    stop, out = threading.Event(), queue.Queue()
    _watch(pending, deadline, stop, out)
    try:
        for n in range(len(pending)):
            left = None if deadline is None else deadline - time.monotonic()
            try:
                item = out.get(timeout=None if left is None else max(0.0, left))
            except queue.Empty:
                raise JobTimeout(f"{len(pending) - n} of {len(jobs)} jobs unfinished after "
                                 f"{timeout}s") from None
            if isinstance(item, ClientError):
                raise item
            yield item
    finally:
        stop.set()
