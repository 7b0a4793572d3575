"""`paddock.Client`: call services, stream their answers, submit jobs and wait for
them, from any Python program (standard library only).

    client = paddock.Client()                      # $PADDOCK_URL, ./paddock.toml, or :8700
    client.call("sentiment", json={"text": "hi"}).json()
    for chunk in client.stream("tts", json={"text": "Hello."}):
        audio.write(chunk)
    job = client.submit("ingest", json={"doc": "..."})
    job.result(timeout=600)                        # long-polls the daemon: no sleep loop

Invariants:

* Connections are kept alive and reused (one pool per client, safe to share between
  threads): a call takes an idle connection or opens one, and gives it back only
  once its answer was read whole. A connection that broke while idle is replaced and
  the request sent again on a new one (the daemon never saw it); nothing is sent
  twice otherwise.
* A stream's connection is never reused: closing the stream (or leaving its `with`
  block, or dropping it) closes the connection, which the daemon reads as the client
  leaving and passes to the worker as CANCEL (the generator's `finally` runs).
* Waiting for a job is the daemon's long-poll (`GET /v1/jobs/{id}?wait=`): one request
  per minute at most while a job runs, none while it is queued between them.
* Every failure is a `paddock.ClientError` (see `_client_errors`); `retries=N` retries
  a 503 after its Retry-After, N times at most, and nothing else.
"""

import json as _json
import os
import threading
import time
import urllib.parse

from . import _http
from ._client_errors import (
    ClientError,
    ConnectionFailed,
    JobCancelled,
    JobFailed,
    JobTimeout,
    Overloaded,
    RequestRejected,
    ServerError,
    from_answer,
)

DEFAULT_URL = "http://127.0.0.1:8700"
LONG_POLL_MAX = 60.0  # seconds: the daemon's cap on ?wait=
_FINISHED = ("done", "dead", "cancelled")
_STALE = (_http.Stale, ConnectionResetError, BrokenPipeError)


def default_url():
    """$PADDOCK_URL; else the `listen` of ./paddock.toml (where `tomllib` exists,
    Python 3.11+); else http://127.0.0.1:8700."""
    url = os.environ.get("PADDOCK_URL")
    if url:
        return url
    try:
        import tomllib
        with open("paddock.toml", "rb") as f:
            listen = tomllib.load(f).get("instance", {}).get("listen")
    except (ImportError, OSError, ValueError):
        listen = None
    if isinstance(listen, str) and ":" in listen:
        host, _, port = listen.rpartition(":")
        if host in ("0.0.0.0", "", "[::]", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{port}"
    return DEFAULT_URL


def duration_param(seconds_or_text):
    """A delay or wait as the daemon reads it: a number of seconds, or text such as
    "90s" or "250ms" passed through."""
    if isinstance(seconds_or_text, str):
        return seconds_or_text
    return f"{max(0, int(round(float(seconds_or_text) * 1000)))}ms"


def service_path(prefix, service, handler):
    path = prefix + urllib.parse.quote(service, safe="")
    if handler:
        path += "/" + urllib.parse.quote(handler, safe="")
    return path


def body_and_type(body, json, headers):
    """The bytes to send and the headers with a Content-Type that fits them."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    if json is not None:
        if body is not None:
            raise TypeError("pass body or json, not both")
        return _json.dumps(json).encode("utf-8"), {"content-type": "application/json", **headers}
    if body is None:
        return b"", headers
    if isinstance(body, str):
        body = body.encode("utf-8")
        headers.setdefault("content-type", "text/plain; charset=utf-8")
    return bytes(body), headers


def parse_event(raw):
    """One server-sent event's lines (without the blank line that ended it) as a dict
    with `event` (default "message"), `data` (its data lines joined) and `id`."""
    event = {"event": "message", "data": "", "id": None}
    data = []
    for line in raw.decode("utf-8", "replace").split("\n"):
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name in ("event", "id"):
            event[name] = value
    event["data"] = "\n".join(data)
    return event


def finished_error(view):
    """The error for a job that finished without a result (dead, cancelled), or None."""
    if view["state"] == "dead":
        history = view.get("history") or []
        cause = history[-1].get("cause") if history else None
        return JobFailed(f"job {view['id']} is dead after {view.get('attempts')} attempt(s): "
                         f"{_describe(cause)}", job=view, cause=cause)
    if view["state"] == "cancelled":
        return JobCancelled(f"job {view['id']} was cancelled", job=view)
    return None


def decoded(resp):
    """A job's result: parsed JSON for a JSON content type, else the bytes."""
    if resp.headers.get("content-type", "").startswith("application/json"):
        return resp.json()
    return resp.content


def job_path(job_id, wait=None, client_timeout=None, what=""):
    """(path, socket timeout) of a GET on a job (`what`: "" or "/result"); with a
    `wait` (seconds, at most a minute), a long-poll whose socket waits longer than
    the daemon, which answers at the wait's end."""
    path = f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}{what}"
    if wait is None:
        return path, None
    wait = max(0.0, min(LONG_POLL_MAX, float(wait)))
    return f"{path}?wait={duration_param(wait)}", wait + max(10.0, client_timeout or 0)


def submit_request(service, body, handler, json, headers, idempotency_key, delay, run_at,
                   priority):
    """(path, body, headers) of an enqueue."""
    data, hdrs = body_and_type(body, json, headers)
    if idempotency_key is not None:
        hdrs["idempotency-key"] = idempotency_key
    query = {}
    if delay is not None:
        query["delay"] = duration_param(delay)
    if run_at is not None:
        query["run_at"] = run_at if isinstance(run_at, str) else run_at.isoformat()
    if priority is not None:
        query["priority"] = str(int(priority))
    path = service_path("/v1/jobs/", service, handler)
    if query:
        path += "?" + urllib.parse.urlencode(query)
    return path, data, hdrs


def result_steps(job, timeout, client_timeout):
    """`result()` without I/O, for both clients: a generator that yields the GETs to
    make, (path, socket timeout), is sent each answer (a `ClientResponse`, or the
    `RequestRejected` it raised) and returns the result. One request for a job that
    is done or finishes within a minute; one more for a dead or cancelled job's
    record. The daemon is asked at least once, whatever the timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    asked = False
    while True:
        error = finished_error(job.view)
        if error is not None:
            raise error
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0 and asked:
            raise JobTimeout(f"job {job.id} is still {job.state} after {timeout}s")
        asked = True
        answer = yield job_path(job.id, LONG_POLL_MAX if left is None else max(0.0, left),
                                client_timeout, "/result")
        if not isinstance(answer, RequestRejected):
            job.view = {**job.view, "state": "done"}
            return decoded(answer)
        state = answer.body.get("state") if isinstance(answer.body, dict) else None
        if state is None:
            raise answer
        if state in _FINISHED:
            record = yield job_path(job.id)  # its record, for JobFailed's cause
            if isinstance(record, ClientError):
                raise record
            job.view = record.json()
        else:
            job.view = {**job.view, "state": state}


class ClientResponse:
    """A successful answer: `status`, `headers` (lower-case names), `content` (bytes);
    `text` and `json()` decode it."""

    def __init__(self, status, headers, content):
        self.status = status
        self.headers = headers
        self.content = content

    @property
    def text(self):
        return self.content.decode("utf-8", "replace")

    def json(self):
        return _json.loads(self.content)

    def __repr__(self):
        return f"<paddock.ClientResponse {self.status}, {len(self.content)} bytes>"


class _Pool:
    """Idle keep-alive connections to one daemon, shared between threads."""

    def __init__(self, host, port, size=32):
        self.host, self.port, self.size = host, port, size
        self._idle = []
        self._lock = threading.Lock()

    def take(self, timeout):
        """An idle connection (reused: True) or a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return _http.Conn(self.host, self.port, timeout), False
            if conn.dead():  # the daemon closed it while it was idle
                conn.close()
                continue
            conn.settimeout(timeout)
            return conn, True

    def give_back(self, conn):
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()


class Stream:
    """A streamed answer: iterate it for chunks (bytes), or for events (dicts with
    `event`, `data` and `id`) when opened with `sse=True`. `close()` — or leaving a
    `with` block — closes the connection, and the daemon cancels the worker's
    generator."""

    def __init__(self, conn, status, headers, sse):
        self.status = status
        self.headers = headers
        self._conn, self._sse = conn, sse
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        self._whole_read = False  # a body that is not chunked comes whole, once
        self._buf = b""
        self.closed = False

    def __iter__(self):
        return self

    def __next__(self):
        if self.closed:
            raise StopIteration
        try:
            return self._next_event() if self._sse else self._next_chunk()
        except _http.CutOff:
            self.close()
            raise ServerError("the stream ended in error: the worker failed after what was sent "
                              "(see paddock logs)", status=self.status) from None
        except OSError as e:
            self.close()
            raise ConnectionFailed(f"the stream's connection broke: {e}") from e

    def _read(self):
        """The next piece of the body; b"" at its end."""
        if self._chunked:
            return self._conn.chunk()
        if self._whole_read:
            return b""
        self._whole_read = True
        return self._conn.body(self.headers)

    def _next_chunk(self):
        data = self._read()
        if not data:
            self.close()
            raise StopIteration
        return data

    def _next_event(self):
        while True:
            cut = self._buf.find(b"\n\n")
            if cut >= 0:
                event = parse_event(self._buf[:cut])
                self._buf = self._buf[cut + 2:]
                if event["event"] == "done":
                    self.close()
                    raise StopIteration
                if event["event"] == "error":
                    self.close()
                    raise ServerError(f"the stream ended in error: {event['data']}", status=self.status)
                return event
            more = self._read()
            if not more:
                self.close()
                raise ConnectionFailed("the event stream ended without `event: done`")
            self._buf += more

    def close(self):
        if not self.closed:
            self.closed = True
            self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


class Job:
    """A submitted job: `id`, `status()`, `result(timeout=None)`, `cancel()`."""

    def __init__(self, client, view):
        self._client = client
        self.id = view["id"]
        self.view = view  # the last record the daemon sent

    @property
    def state(self):
        """The state last seen (`status()` asks again)."""
        return self.view["state"]

    def done(self):
        """Whether the job was last seen finished (done, dead or cancelled)."""
        return self.state in _FINISHED

    def status(self, wait=None):
        """The job's record (state, attempts, history); with `wait` (seconds, at most
        60), the daemon answers as soon as it finishes, or after `wait`."""
        self.view = self._client._job(self.id, wait)
        return self.view

    def result(self, timeout=None):
        """Blocks until the job finishes: its result (parsed JSON, else bytes); raises
        `JobFailed` (dead), `JobCancelled`, or `JobTimeout` after `timeout` seconds.
        One request for a job that is done, or that finishes within a minute."""
        steps = result_steps(self, timeout, self._client.timeout)
        try:
            request = next(steps)
            while True:
                path, socket_timeout = request
                try:
                    answer = self._client._request("GET", path, timeout=socket_timeout)
                except RequestRejected as e:
                    answer = e
                request = steps.send(answer)
        except StopIteration as done:
            return done.value

    def cancel(self):
        """Cancels the job (queued, claimed or running); its record afterwards.
        Raises `RequestRejected` (409) when it had already finished."""
        self.view = self._client._request("DELETE", job_path(self.id)[0]).json()
        return self.view

    def __repr__(self):
        return f"<paddock.Job {self.id} {self.state}>"


def _describe(cause):
    if isinstance(cause, dict):
        return cause.get("error") or cause.get("description") or _json.dumps(cause)
    return str(cause) if cause is not None else "no cause recorded"


class Client:
    """A client of one paddock daemon. See the module's documentation."""

    def __init__(self, url=None, token=None, timeout=60.0):
        self.url = (url or default_url()).rstrip("/")
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"paddock.Client needs an http:// URL, not {self.url!r}")
        self.token = token if token is not None else os.environ.get("PADDOCK_TOKEN")
        self.timeout = timeout
        self.requests = 0  # requests sent: for tests and curiosity
        self._pool = _Pool(parsed.hostname, parsed.port or 80)
        self._host = f"{parsed.hostname}:{parsed.port or 80}"
        self._count = threading.Lock()

    # -- online calls -----------------------------------------------------------

    def call(self, service, body=None, *, handler=None, json=None, headers=None, timeout=None,
             retries=0):
        """POST to a service's handler; the answer (`ClientResponse`) or a `ClientError`."""
        data, hdrs = body_and_type(body, json, headers)
        path = service_path("/v1/", service, handler)
        for attempt in range(retries + 1):
            try:
                return self._request("POST", path, data, hdrs, timeout)
            except Overloaded as e:
                if attempt == retries or e.retry_after is None:
                    raise
                time.sleep(e.retry_after)  # the daemon's own instruction

    def stream(self, service, body=None, *, handler=None, json=None, headers=None, timeout=None,
               sse=False):
        """POST to a streaming handler: a `Stream` of chunks (or events, `sse=True`)."""
        data, hdrs = body_and_type(body, json, headers)
        if sse:
            hdrs["accept"] = "text/event-stream"
        conn, status, head = self._send("POST", service_path("/v1/", service, handler), data,
                                        hdrs, timeout, stream=True)
        if status >= 300:
            try:
                content = conn.body(head)
            except (OSError, _http.CutOff):
                content = b""
            conn.close()
            raise from_answer(status, head, content)
        return Stream(conn, status, head, sse)

    # -- jobs ------------------------------------------------------------------------

    def submit(self, service, body=None, *, handler=None, json=None, headers=None,
               idempotency_key=None, delay=None, run_at=None, priority=None):
        """Enqueues a durable job; its `Job`. `idempotency_key` makes a repeat return
        the same job; `delay` (seconds or "90s") or `run_at` (a datetime or RFC 3339
        text) hold it until then; `priority` (an integer, higher first)."""
        path, data, hdrs = submit_request(service, body, handler, json, headers,
                                          idempotency_key, delay, run_at, priority)
        return Job(self, self._request("POST", path, data, hdrs).json())

    def job(self, job_id):
        """A `Job` for an id (from another process, a database, a log)."""
        return Job(self, self._job(job_id, None))

    def _job(self, job_id, wait):
        path, socket_timeout = job_path(job_id, wait, self.timeout)
        return self._request("GET", path, timeout=socket_timeout).json()

    # -- the connection ------------------------------------------------------------

    def _request(self, method, path, data=b"", headers=None, timeout=None):
        conn, status, hdrs = self._send(method, path, data, headers or {}, timeout)
        try:
            content = conn.body(hdrs)
        except OSError as e:
            conn.close()
            raise ConnectionFailed(f"{method} {path}: the answer broke off: {e}") from e
        if hdrs.get("connection", "").lower() == "close":
            conn.close()
        else:
            self._pool.give_back(conn)
        if status >= 300:
            raise from_answer(status, hdrs, content)
        return ClientResponse(status, hdrs, content)

    def _send(self, method, path, data, headers, timeout, stream=False):
        """Sends a request and reads the answer's head: (connection, status, headers)."""
        timeout = self.timeout if timeout is None else timeout
        hdrs = dict(headers)
        if self.token:
            hdrs.setdefault("authorization", f"Bearer {self.token}")
        if stream:
            hdrs["connection"] = "close"
        for fresh in (False, True):
            conn, reused = None, False
            try:
                if fresh:
                    conn, reused = _http.Conn(self._pool.host, self._pool.port, timeout), False
                else:
                    conn, reused = self._pool.take(timeout)
                with self._count:
                    self.requests += 1
                conn.send(method, path, self._host, data, hdrs)
                status, head = conn.head()
                return conn, status, head
            except _STALE as e:
                if conn is not None:
                    conn.close()
                # Closed as it was reused (the idle check above missed it by an
                # instant): sent again only when sending twice is harmless.
                harmless = method in ("GET", "DELETE") or "idempotency-key" in hdrs
                if reused and not fresh and harmless:
                    continue
                raise ConnectionFailed(f"{method} {self.url}{path}: {e!r}") from e
            except OSError as e:
                if conn is not None:
                    conn.close()
                raise ConnectionFailed(f"{method} {self.url}{path}: {e}") from e
        raise AssertionError("unreachable")

    def close(self):
        """Closes the idle connections (a later call opens new ones)."""
        self._pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<paddock.Client {self.url}>"


__all__ = ["Client", "ClientResponse", "Job", "Stream", "ClientError"]
