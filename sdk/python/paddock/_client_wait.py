"""`paddock.wait` and `paddock.as_completed`: many jobs at once, in the manner of
`concurrent.futures`.

Each job is waited for by the daemon's long-poll, on a thread of a small pool (at most
`MAX_THREADS` connections at a time); a job already finished answers at once. No
loop sleeps: a thread is always inside a long-poll or done.
"""

import concurrent.futures as _cf
import time

from ._client import LONG_POLL_MAX
from ._client_errors import JobTimeout

FIRST_COMPLETED = _cf.FIRST_COMPLETED
FIRST_EXCEPTION = _cf.FIRST_EXCEPTION
ALL_COMPLETED = _cf.ALL_COMPLETED
MAX_THREADS = 32


def _until_finished(job, stop):
    """Waits (long-polls) until `job` finishes or `stop` is set; the job."""
    while not job.done() and not stop[0]:
        job.status(wait=LONG_POLL_MAX if stop[1] is None
                   else max(0.0, min(LONG_POLL_MAX, stop[1] - time.monotonic())))
        if stop[1] is not None and time.monotonic() >= stop[1]:
            break
    return job


def _failed(job):
    return job.state in ("dead", "cancelled")


def wait(jobs, timeout=None, return_when=ALL_COMPLETED):
    """Waits for `jobs` (`paddock.Job`s): (done, not_done), two sets. `return_when` is
    FIRST_COMPLETED, FIRST_EXCEPTION (a dead or cancelled job) or ALL_COMPLETED; after
    `timeout` seconds it returns what it has (it never raises for the timeout)."""
    jobs = list(jobs)
    done = {j for j in jobs if j.done()}
    if (return_when == FIRST_COMPLETED and done) or len(done) == len(jobs) or (
            return_when == FIRST_EXCEPTION and any(_failed(j) for j in done)):
        return done, set(jobs) - done
    deadline = None if timeout is None else time.monotonic() + timeout
    stop = [False, deadline]
    pending = [j for j in jobs if j not in done]
    pool = _cf.ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(pending)),
                                  thread_name_prefix="paddock-wait")
    try:
        futures = {pool.submit(_until_finished, j, stop): j for j in pending}
        for f in _cf.as_completed(futures, timeout=None):
            job = f.result()
            if job.done():
                done.add(job)
            if return_when == FIRST_COMPLETED and done:
                break
            if return_when == FIRST_EXCEPTION and _failed(job):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        stop[0] = True  # threads end at their long-poll's end (at most LONG_POLL_MAX)
        pool.shutdown(wait=False)
    done |= {j for j in jobs if j.done()}
    return done, set(jobs) - done


def as_completed(jobs, timeout=None):
    """Yields `jobs` as they finish (done, dead or cancelled). Raises `JobTimeout` when
    `timeout` seconds pass first."""
    jobs = list(jobs)
    deadline = None if timeout is None else time.monotonic() + timeout
    for j in [j for j in jobs if j.done()]:
        yield j
    pending = [j for j in jobs if not j.done()]
    if not pending:
        return
    stop = [False, deadline]
    pool = _cf.ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(pending)),
                                  thread_name_prefix="paddock-wait")
    try:
        futures = [pool.submit(_until_finished, j, stop) for j in pending]
        left = len(futures)
        for f in _cf.as_completed(futures):
            job = f.result()
            if not job.done():
                raise JobTimeout(f"{left} of {len(jobs)} jobs unfinished after {timeout}s")
            left -= 1
            yield job
    finally:
        stop[0] = True
        pool.shutdown(wait=False)
