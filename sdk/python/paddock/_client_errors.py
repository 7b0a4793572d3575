"""The errors `paddock.Client` and `paddock.AsyncClient` raise, and how an HTTP answer
maps to them.

They are a family of their own under `ClientError`, apart from the worker-side names:
`paddock.BadRequest` inside a handler means "this request is wrong" (a 400 to the
caller), so a handler that calls another service and lets a `ClientError` escape
fails with a 500 of its own (an unexpected exception), never a 400 it did not mean.
"""

import json as _json


class ClientError(Exception):
    """Any failure of a client call. `status` is the HTTP status (None when no answer
    came), `message` the server's `error` text, `body` its JSON answer (or None),
    `headers` its headers (lower-case names)."""

    def __init__(self, message, *, status=None, body=None, headers=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body
        self.headers = headers or {}


class ConnectionFailed(ClientError):
    """The daemon could not be reached (not running, wrong URL), or the connection broke
    before an answer came."""


class RequestRejected(ClientError):
    """A 4xx: the request was wrong (bad JSON, a handler's refusal, an unknown job);
    `message` is the server's explanation."""


class NotFound(RequestRejected):
    """A 404: no such service, handler or job (or a job past its retention)."""


class Unauthorized(ClientError):
    """A 401 or 403: the token is missing or wrong (`token=` or $PADDOCK_TOKEN)."""


class Overloaded(ClientError):
    """A 503: the service is at capacity, or no worker can serve it now (crash loop,
    failed). `retry_after` is the server's Retry-After, in seconds (or None)."""

    def __init__(self, message, *, retry_after=None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TimedOut(ClientError):
    """A 504: the request passed its deadline (`request_timeout`, or `queue_timeout`
    waiting for a worker); a worker still running it was killed."""


class WorkerCrashed(ClientError):
    """A 502: the worker serving the request died. `signal` (e.g. "SIGSEGV") or
    `exit_code` says how; `error_id` finds its last lines in `paddock logs`."""

    def __init__(self, message, *, signal=None, exit_code=None, error_id=None, **kw):
        super().__init__(message, **kw)
        self.signal = signal
        self.exit_code = exit_code
        self.error_id = error_id


class ServerError(ClientError):
    """A 500 (the handler raised; `error_id` finds its traceback in `paddock logs`), any
    other 5xx, or a stream that ended in error."""

    def __init__(self, message, *, error_id=None, **kw):
        super().__init__(message, **kw)
        self.error_id = error_id


class JobFailed(ClientError):
    """The job is dead: its attempts failed. `job` is its record (state, history),
    `cause` the last attempt's cause."""

    def __init__(self, message, *, job=None, cause=None, **kw):
        super().__init__(message, **kw)
        self.job = job
        self.cause = cause


class JobCancelled(ClientError):
    """The job was cancelled before it finished."""

    def __init__(self, message, *, job=None, **kw):
        super().__init__(message, **kw)
        self.job = job


class JobTimeout(ClientError, TimeoutError):
    """`result(timeout=...)` or `wait(..., timeout=...)` ran out before the job finished;
    the job goes on."""


def retry_after(headers):
    """The Retry-After header in seconds, or None."""
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def from_answer(status, headers, content):
    """The error for a non-2xx answer."""
    try:
        body = _json.loads(content.decode("utf-8")) if content else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        message = str(body.get("error") or body)
        cause = body.get("cause") if isinstance(body.get("cause"), dict) else {}
    else:
        message = content.decode("utf-8", "replace").strip() or f"HTTP {status}"
        cause = {}
    kw = {"status": status, "body": body, "headers": headers}
    if status in (401, 403):
        return Unauthorized(message, **kw)
    if status == 404:
        return NotFound(message, **kw)
    if 400 <= status < 500:
        return RequestRejected(message, **kw)
    if status == 502:
        return WorkerCrashed(message, signal=cause.get("signal"), exit_code=cause.get("exit_code"),
                             error_id=cause.get("error_id"), **kw)
    if status == 503:
        return Overloaded(message, retry_after=retry_after(headers), **kw)
    if status == 504:
        return TimedOut(message, **kw)
    return ServerError(message, error_id=cause.get("error_id"), **kw)
