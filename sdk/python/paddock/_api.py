"""The public face of a worker: the decorators that mark handlers, the request and response types, and the errors a handler raises for its client."""

import json


_MARK = "_paddock_handler"


def handler(fn=None, *, idempotent=False):
    """Marks a method as a request handler: `@handler` or `@handler(idempotent=True)`.

    The handler is named after the method; `idempotent` tells the daemon that it may
    retry a request on another worker when this one dies mid-request."""
    def mark(f):
        setattr(f, _MARK, {"idempotent": bool(idempotent)})
        return f
    return mark(fn) if fn is not None else mark


def _wait_ms(value):
    """max_wait as milliseconds: "5ms", "0.2s", or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ms = value * 1000.0
    elif isinstance(value, str) and value.strip().endswith("ms"):
        ms = float(value.strip()[:-2])
    elif isinstance(value, str) and value.strip().endswith("s"):
        ms = float(value.strip()[:-1]) * 1000.0
    else:
        raise ValueError(f"max_wait={value!r}: give \"5ms\", \"0.2s\" or seconds as a number")
    if not 0 <= ms <= 10000:
        raise ValueError(f"max_wait={value!r} is outside 0ms..10s")
    return int(round(ms))


def batch(fn=None, *, max_size=32, max_wait=0):
    """Marks a method as a batched handler: it receives a list of Requests and returns
    a list of results of the same length (or raises).

        @paddock.batch(max_size=32, max_wait="5ms")
        def embed(self, reqs):
            ...

    `max_size` (1-4096) is the most requests one call gets. `max_wait` is how long
    the daemon may hold a batch open for more requests after its oldest arrived
    (default 0: a batch is what is waiting when a worker becomes free; an idle worker
    never waits for company). Put `paddock.Error("...", status=400)` in a request's
    place to fail that request alone. A batched method may be run again on other
    workers (when a batch whose worker died is split to find the request that killed
    it): declaring it batched declares it safe to re-run."""
    if isinstance(max_size, bool) or not isinstance(max_size, int) or not 1 <= max_size <= 4096:
        raise ValueError(f"max_size={max_size!r} must be an integer in 1..4096")
    limits = {"max_size": max_size, "max_wait_ms": _wait_ms(max_wait)}

    def mark(f):
        setattr(f, _MARK, {"idempotent": True, "batch": limits})
        return f
    return mark(fn) if fn is not None else mark


class Error(Exception):
    """Put it in a batched handler's result list in place of one request's result to
    fail that request alone: `paddock.Error("text is empty", status=400)`.

    The client gets `status` (400-599, default 500) and `{"error": message, ...}`:
    the message is meant for the client, as with BadRequest. Raised (rather than
    returned) from any handler, it fails the whole call the same way."""

    def __init__(self, message, status=500):
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"status={status!r} must be an HTTP error status (400-599)")
        super().__init__(message)
        self.message, self.status = str(message), status


class BadRequest(ValueError):
    """Raise it in a handler when the *request* is wrong (a missing field, a value out
    of range): `raise paddock.BadRequest("need a 'text' field")`.

    The worker answers BAD_REQUEST with `str(exc)` as the message, which the daemon
    gives the client as HTTP 400 `{"error": <message>, ...}`; a job that gets it is
    failed without a retry. Write the message for the client: it is sent as is, with
    no traceback, and nothing is logged. `Request.json()` raises it for a body that
    is not JSON. Any other exception is the handler's own failure (HTTP 500).

    It is a ValueError, so handlers that caught ValueError around `req.json()` (whose
    JSON errors were ValueErrors before) keep working."""


class Request:
    """One request: `.id`, `.method`, `.content_type`, `.body` (bytes), and `.deadline`,
    the time.monotonic() value at which the daemon kills this worker."""

    __slots__ = ("id", "method", "content_type", "body", "deadline")

    def __init__(self, id, method, content_type, body, deadline):
        self.id, self.method, self.content_type = id, method, content_type
        self.body, self.deadline = body, deadline

    def json(self):
        """The body parsed as JSON; raises BadRequest when it is not JSON (or not
        UTF-8), with a short message for the client and no traceback."""
        try:
            return json.loads(self.body)
        except UnicodeDecodeError as e:
            raise BadRequest("the request body is not valid JSON: it is not UTF-8 "
                             f"(invalid byte at position {e.start})") from None
        except ValueError as e:  # JSONDecodeError, huge integers
            raise BadRequest(f"the request body is not valid JSON: {e}") from None
        except RecursionError:
            raise BadRequest("the request body is not valid JSON: "
                             "it is nested too deeply") from None

    def text(self):
        return self.body.decode("utf-8")

    def __repr__(self):
        return (f"Request(id={self.id}, method={self.method!r}, "
                f"content_type={self.content_type!r}, body=<{len(self.body)} bytes>)")


class Response:
    """A reply with an explicit content type; a str body is encoded as UTF-8."""

    __slots__ = ("body", "content_type")

    def __init__(self, body, content_type="application/octet-stream"):
        self.body = body.encode("utf-8") if isinstance(body, str) else bytes(memoryview(body))
        self.content_type = content_type


def _encode(value):
    """A handler's return value -> (content_type, body bytes)."""
    if isinstance(value, Response):
        return value.content_type, value.body
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "application/octet-stream", bytes(value)
    if isinstance(value, str):
        return "text/plain; charset=utf-8", value.encode("utf-8")
    # NaN and Infinity are not JSON: refuse them rather than send invalid JSON.
    body = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return "application/json", body.encode("utf-8")


def _cut(b, n):
    """b cut to at most n bytes without splitting a UTF-8 character."""
    return b if len(b) <= n else b[:max(0, n)].decode("utf-8", "ignore").encode("utf-8")


_CTYPES = {}  # content type -> its UTF-8 bytes (a handler returns a handful of them)


def _ctype_bytes(ctype):
    b = _CTYPES.get(ctype)
    if b is None:
        b = ctype.encode("utf-8")
        if len(b) > 0xFFFF:
            raise ValueError(f"content type of {len(b)} bytes does not fit a str16")
        if len(_CTYPES) < 64:
            _CTYPES[ctype] = b
    return b
