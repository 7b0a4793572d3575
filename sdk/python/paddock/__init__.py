"""The paddock worker SDK: serve a Python model under the paddock daemon.

    import paddock

    class Embedder:
        def setup(self):                      # optional: load the model here
            self.model = load()

        @paddock.handler                      # `predict` is the default handler
        def predict(self, req):
            data = req.json()                 # raises paddock.BadRequest if not JSON
            if "text" not in data:
                raise paddock.BadRequest("need a 'text' field")   # -> HTTP 400
            return {"vector": self.model(data["text"])}

        @paddock.handler(idempotent=True)     # safe for the daemon to retry
        def voices(self, req):
            return ["alto", "bass"]

        @paddock.batch(max_size=32, max_wait="5ms")   # many requests, one call
        def embed(self, reqs):                          # a list of Requests
            vecs = self.model.encode([r.json()["text"] for r in reqs])
            return [{"vector": v} for v in vecs]        # one result per request

    paddock.serve(Embedder())

        @paddock.handler                      # a generator streams: each yield is
        def speak(self, req):                 # one chunk, sent at once
            for pcm in self.tts(req.json()["text"]):
                yield pcm

This file implements docs/protocol.md (version 6: version 1, BAD_REQUEST, batches,
streams, FORK_WARNING and REFUSED). Its invariants:

* Everything happens on the main thread: `setup()` and every handler run on the
  thread that called `serve()`, which must be the main thread. The SDK never starts
  a thread, so models that insist on the main thread (signals, some GPU runtimes)
  work, and a handler that hangs is killed by the daemon at its deadline.
* One request at a time: the daemon sends a REQUEST only after the previous one was
  answered, and the worker answers each with exactly one REPLY, ERROR, BAD_REQUEST or
  REFUSED.
  A batched handler gets a BATCH (a list of requests) and the worker answers it with
  one BATCH_REPLY holding exactly one result per request: what the handler returned
  in that request's place, a `paddock.Error` for that one request, or — when the
  handler raised or returned the wrong number of results — the same failure for all.
* A handler that is a generator streams its answer: STREAM_START, one CHUNK per
  `yield` (sent before the generator resumes), then STREAM_END — or ERROR after the
  chunks already sent when it raises, so a failed stream never looks complete. When
  the daemon sends CANCEL (the client left), the generator is closed at its next
  `yield` (its `finally` runs) and the stream ends; the worker takes the next request.
* A handler that raises `paddock.BadRequest` (as `req.json()` does for a body that is
  not JSON) answers BAD_REQUEST: its message is meant for the client (HTTP 400), and
  nothing is logged. Any other exception answers ERROR with the message and the
  traceback (HTTP 500; the daemon logs them), and its traceback is also written to
  stderr, which the daemon captures into the service's log.
* The worker exits when the daemon is gone (end-of-file on the socket) with status 0,
  on SHUTDOWN with 0, after a failed setup with 1, and on a protocol error with 1.
  It exits through os._exit (after flushing stdout and stderr), so a stray
  non-daemon thread started by a library can never keep a dead worker alive.
* The fork guard: when the worker process forks (os.fork, multiprocessing's "fork"
  start method) while it has more than one OS thread — counted from /proc/self/task,
  so OpenMP, BLAS and other native threads count — it writes a warning naming the
  hazard, the thread count and the call site to stderr, and sends FORK_WARNING to
  the daemon (status, metrics, `paddock doctor`). It changes nothing else: it does
  not switch multiprocessing's start method.
* `serve()` does nothing when called from a module imported as `__mp_main__` (a
  "spawn" or "forkserver" child re-importing the worker's main module).
* The SDK writes nothing to stdout or stderr except when it is run outside paddock,
  when setup fails, when a handler raises an unexpected exception (its traceback, to
  stderr), and when the daemon sends something it does not understand.
"""

import inspect
import json
import os
import platform
import select
import socket
import struct
import sys
import threading
import time
import traceback

__all__ = ["handler", "batch", "serve", "Request", "Response", "BadRequest", "Error",
           "PROTOCOL_VERSION"]
__version__ = "0.1.0"

PROTOCOL_VERSION = 6  # said in HELLO; 2 BAD_REQUEST, 3 batches, 4 streams, 5 FORK_WARNING, 6 REFUSED
DEFAULT_MAX_FRAME = 64 * 1024 * 1024

HELLO, READY, SETUP_FAILED, FORK_WARNING = 0x01, 0x02, 0x03, 0x04
REQUEST, REPLY, ERROR = 0x10, 0x11, 0x12
BAD_REQUEST = 0x16  # id: u64, then the UTF-8 message to the end (version 2)
BATCH, BATCH_REPLY = 0x17, 0x18  # version 3
REFUSED = 0x19  # id: u64, status: u16, then the UTF-8 message (version 6)
STREAM_START, CHUNK, STREAM_END, CANCEL = 0x13, 0x14, 0x15, 0x21  # version 4
_OK, _REFUSED, _FAILED = 0, 1, 2  # a batch item's outcome
SHUTDOWN = 0x20

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


class _ProtocolError(Exception):
    pass


class _Conn:
    def __init__(self, sock, max_frame):
        self.sock, self.max_frame = sock, max_frame
        self._buf = bytearray()  # received, not yet returned as frames
        self._chunk = bytearray(256 * 1024)
        self._chunk_view = memoryview(self._chunk)
        self._poll = None
        if hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN)

    def send(self, ftype, *parts):
        """One frame. A small frame goes out in one write (one wake-up of the
        daemon); a large last part (a reply's body) is sent without being copied."""
        size = 1 + sum(len(p) for p in parts)
        head = struct.pack(">IB", size, ftype) + b"".join(parts[:-1])
        self._write(head, parts[-1] if parts else b"")

    def _write(self, head, body):
        if len(body) <= 65536:
            self.sock.sendall(head + bytes(body))
        else:
            self.sock.sendall(head)
            self.sock.sendall(body)

    def _fill(self):
        """Appends what the socket has to the buffer; False at end-of-file.

        It waits in poll() for input only, not in recv(): a recv() that sleeps is
        also woken each time the daemon consumes a frame this worker sent (the
        socket's "write space" wake-up), one useless wake-up per reply."""
        if self._poll is not None:
            self._poll.poll()
        k = self.sock.recv_into(self._chunk)
        if k == 0:
            return False
        self._buf += self._chunk_view[:k]
        return True

    def recv(self):
        """(type, payload) of the next frame, or None when the daemon is gone.

        One recv() per frame in the usual case: the buffer takes whatever the
        socket holds; a frame larger than the buffer is read straight into its
        own bytearray."""
        buf = self._buf
        while len(buf) < 4:
            if not self._fill():
                return None
        (length,) = struct.unpack_from(">I", buf)
        if not 1 <= length <= self.max_frame:
            raise _ProtocolError(f"frame length {length} is outside 1..{self.max_frame}")
        while len(buf) < 5:
            if not self._fill():
                return None
        ftype, end = buf[4], 4 + length
        if len(buf) >= end:
            # Views are released before the buffer is resized (PyPy frees them late).
            with memoryview(buf) as whole, whole[5:end] as part:
                data = bytes(part)
            del buf[:end]
            return ftype, data
        data = bytearray(length - 1)
        got = len(buf) - 5
        data[:got] = buf[5:]
        buf.clear()
        view = memoryview(data)
        while got < len(data):
            if self._poll is not None:
                self._poll.poll()
            k = self.sock.recv_into(view[got:])
            if k == 0:
                return None
            got += k
        return ftype, bytes(data)

    def reply(self, rid, ctype, body):
        """Sends REPLY (one write for a small body); ctype is bytes."""
        head = _REPLY_HEAD.pack(11 + len(ctype) + len(body), REPLY, rid, len(ctype)) + ctype
        self._write(head, body)

    def error(self, rid, message, tb):
        """Sends ERROR, cutting the traceback (then the message) to fit a frame."""
        msg, tbb = message.encode("utf-8"), tb.encode("utf-8")
        room = self.max_frame - 1 - 12
        msg = _cut(msg, room)
        tbb = _cut(tbb, room - len(msg))
        self.send(ERROR, struct.pack(">QI", rid, len(msg)), msg, tbb)

    def bad_request(self, rid, message):
        """Sends BAD_REQUEST, cutting the message to fit a frame."""
        msg = _cut(message.encode("utf-8"), self.max_frame - 1 - 8)
        self.send(BAD_REQUEST, struct.pack(">Q", rid), msg)

    def refused(self, rid, status, message):
        """Sends REFUSED (version 6): this status and a message for the client."""
        msg = _cut(message.encode("utf-8"), self.max_frame - 1 - 10)
        self.send(REFUSED, struct.pack(">QH", rid, status), msg)


_REQUEST_HEAD = struct.Struct(">QIH")  # id, deadline_ms, method length
_U16 = struct.Struct(">H")
_REPLY_HEAD = struct.Struct(">IBQH")  # length, type, id, content type length


def _parse_request(p):
    try:
        rid, deadline_ms, mlen = _REQUEST_HEAD.unpack_from(p, 0)
        at = 14
        method = p[at:at + mlen].decode("utf-8")
        at += mlen
        (clen,) = _U16.unpack_from(p, at)
        at += 2
        ctype = p[at:at + clen].decode("utf-8")
        at += clen
        if at > len(p):
            raise ValueError("truncated")
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise _ProtocolError(f"malformed REQUEST frame ({e})") from None
    deadline = time.monotonic() + deadline_ms / 1000.0
    return Request(rid, method, ctype, p[at:], deadline)


def _handlers(obj):
    """{name: (bound method, idempotent, batch limits or None)}, `predict` first, then
    in definition order."""
    found = {}
    for klass in reversed(type(obj).__mro__):
        for name, attr in vars(klass).items():
            mark = getattr(attr, _MARK, None)
            if mark is not None:  # bound from the class: instance attributes can't shadow it
                found[name] = (attr.__get__(obj, type(obj)), mark["idempotent"],
                               mark.get("batch"))
            elif name in found:  # overridden by an undecorated method
                del found[name]
    if "predict" in found:
        found = {"predict": found.pop("predict"), **found}
    return found


def _log(text):
    """Writes text to stderr (the service's log); a closed or broken stderr must not
    stop the worker."""
    try:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _exit(code, message=None):
    if message:
        print(f"paddock: {message}", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


_USAGE = """\
{script} is a paddock worker: it talks to the paddock daemon over an inherited socket
(PADDOCK_FD), so it is not meant to be run by hand. Declare it in a paddock.toml:

    [services.{name}]
    command = ["python3", "{script}"]

and start it with `paddock run` (or `paddock start`) in that folder.
"""


def _env_int(name, default):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        _exit(2, f"{name}={raw!r} is not an integer")


def serve(obj):
    """Runs `obj` as a paddock worker until the daemon goes away. Never returns —
    except in a multiprocessing "spawn"/"forkserver" child, which re-imports the
    worker's main module as `__mp_main__`: there it returns at once."""
    if sys._getframe(1).f_globals.get("__name__") == "__mp_main__":
        return
    if not os.environ.get("PADDOCK_FD"):
        script = os.path.basename(sys.argv[0] or "worker.py") or "worker.py"
        stem = os.path.splitext(script)[0].lower()
        name = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "-" for c in stem)
        name = name.lstrip("_-")[:64] or "model"  # a valid service name
        sys.stderr.write(_USAGE.format(script=script, name=name))
        _exit(2)
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("paddock.serve() must be called on the main thread")
    fd = _env_int("PADDOCK_FD", None)
    max_frame = _env_int("PADDOCK_MAX_FRAME", DEFAULT_MAX_FRAME)
    try:
        sock = socket.socket(fileno=fd)
        sock.setblocking(True)
    except (OSError, ValueError) as e:
        _exit(2, f"PADDOCK_FD={fd} is not a usable socket: {e}")
    conn = _Conn(sock, max_frame)
    _install_fork_guard(conn)
    try:
        _run(conn, obj)
    except (BrokenPipeError, ConnectionResetError):
        _exit(0)  # the daemon is gone
    except _ProtocolError as e:
        _exit(1, f"protocol error from the daemon: {e}")


def _handler_failed(conn, req, exc, what):
    """A handler's unexpected exception: ERROR with the message and traceback, and
    the traceback in the service's log. Call it from the `except` block."""
    tb = traceback.format_exc()
    conn.error(req.id, f"{type(exc).__name__}: {exc}", tb)
    _log(f"paddock: {what} {req.method!r} failed on request {req.id}:\n{tb}")


def _next_frame(conn):
    """(type, payload) of the daemon's next frame; exits 0 when the daemon is gone
    (end-of-file) or sends SHUTDOWN."""
    frame = conn.recv()
    if frame is None or frame[0] == SHUTDOWN:
        _exit(0)
    return frame


_NO_HANDLERS = """\
{name} has no handler: no method of it is marked @paddock.handler, so no request could \
reach it. Mark each method that serves requests, for example:

    class {name}:
        @paddock.handler
        def predict(self, req):
            return {{"ok": True}}

(@paddock.batch(...) marks a batched handler.)
"""


def _setup_failed(conn, text):
    """Tells the daemon (SETUP_FAILED) and the log why this worker cannot get ready,
    then exits 1."""
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    try:
        conn.send(SETUP_FAILED, _cut(text.encode("utf-8"), conn.max_frame - 1))
    except OSError:
        pass  # the daemon is gone; the exit status still says it failed
    _exit(1)


def _run(conn, obj):
    meta = {"sdk": "python", "sdk_version": __version__, "python": platform.python_version()}
    conn.send(HELLO, struct.pack(">HI", PROTOCOL_VERSION, os.getpid()),
              json.dumps(meta).encode("utf-8"))
    # Handlers are marked on the class: a worker without one is told before it
    # loads a model that nothing could ever call.
    handlers = _handlers(obj)
    if not handlers:
        _setup_failed(conn, _NO_HANDLERS.format(name=type(obj).__name__))
    try:
        setup = getattr(obj, "setup", None)
        if callable(setup):
            setup()
    except Exception:
        _setup_failed(conn, "setup() raised an exception:\n" + traceback.format_exc())
    ready = {"methods": list(handlers),
             "idempotent": [n for n, (_, idem, _b) in handlers.items() if idem],
             "batch": {n: b for n, (_, _i, b) in handlers.items() if b is not None}}
    conn.send(READY, json.dumps(ready).encode("utf-8"))

    while True:
        ftype, data = _next_frame(conn)
        if ftype == BATCH:
            method, reqs = _parse_batch(data)
            entry = handlers.get(method)
            if entry is None:
                results = [(_FAILED, f"no handler named {method}", "")] * len(reqs)
            else:
                results = _run_batch(entry, method, reqs)
            _send_batch_reply(conn, reqs, results)
            continue
        if ftype != REQUEST:
            raise _ProtocolError(f"unexpected frame type 0x{ftype:02x}")
        req = _parse_request(data)
        entry = handlers.get(req.method)
        if entry is None:
            conn.error(req.id, f"no handler named {req.method}", "")
            continue
        try:
            if entry[2] is not None:  # a batched handler asked for one request
                (out,) = _run_batch(entry, req.method, [req])
                if out[0] == _REFUSED:
                    raise Error(out[2], status=out[1])
                if out[0] == _FAILED:
                    conn.error(req.id, out[1], out[2])
                    continue
                ctype, body = out[1], out[2]
            else:
                value = entry[0](req)
                if _is_stream(value):
                    _stream(conn, req, value)
                    continue
                ctype, body = _encode(value)
                ctype = _ctype_bytes(ctype)
        except BadRequest as e:
            conn.bad_request(req.id, str(e) or "bad request")
            continue
        except Error as e:
            if e.status == 400:
                conn.bad_request(req.id, e.message or "bad request")
            else:
                conn.refused(req.id, e.status, e.message)
            continue
        except Exception as e:
            _handler_failed(conn, req, e, "handler")
            continue
        size = 11 + len(ctype) + len(body)
        if size > conn.max_frame:
            conn.error(req.id, f"reply too large: {size} bytes, the largest frame is "
                               f"{conn.max_frame} bytes (PADDOCK_MAX_FRAME)", "")
            continue
        conn.reply(req.id, ctype, body)


_ITEM_HEAD = struct.Struct(">QIH")  # id, deadline_ms, content type length
_U32 = struct.Struct(">I")


def _parse_batch(p):
    """(method, [Request]) from a BATCH payload."""
    try:
        (mlen,) = _U16.unpack_from(p, 0)
        at = 2
        method = p[at:at + mlen].decode("utf-8")
        at += mlen
        (count,) = _U16.unpack_from(p, at)
        at += 2
        now = time.monotonic()
        reqs = []
        for _ in range(count):
            rid, deadline_ms, clen = _ITEM_HEAD.unpack_from(p, at)
            at += 14
            ctype = p[at:at + clen].decode("utf-8")
            at += clen
            (blen,) = _U32.unpack_from(p, at)
            at += 4
            body = p[at:at + blen]
            at += blen
            reqs.append(Request(rid, method, ctype, body, now + deadline_ms / 1000.0))
        if at != len(p) or count == 0:
            raise ValueError("bad length")
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise _ProtocolError(f"malformed BATCH frame ({e})") from None
    return method, reqs


def _run_batch(entry, method, reqs):
    """Calls a batched handler; one (outcome, a, b) per request: (_OK, ctype bytes,
    body), (_REFUSED, status, message) or (_FAILED, message, traceback)."""
    fn = entry[0]
    try:
        values = fn(reqs)
        values = list(values)
        if len(values) != len(reqs):
            raise TypeError(f"batched handler {method!r} returned {len(values)} results "
                            f"for {len(reqs)} requests")
    except BadRequest as e:
        return [(_REFUSED, 400, str(e) or "bad request")] * len(reqs)
    except Error as e:
        return [(_REFUSED, e.status, e.message)] * len(reqs)
    except Exception as e:
        tb = traceback.format_exc()
        _log(f"paddock: batched handler {method!r} failed on a batch of {len(reqs)}:\n{tb}")
        return [(_FAILED, f"{type(e).__name__}: {e}", tb)] * len(reqs)
    out = []
    for v in values:
        if isinstance(v, Error):
            out.append((_REFUSED, v.status, v.message))
            continue
        try:
            ctype, body = _encode(v)
            out.append((_OK, _ctype_bytes(ctype), body))
        except Exception as e:
            out.append((_FAILED, f"{type(e).__name__}: {e}", traceback.format_exc()))
    return out


def _send_batch_reply(conn, reqs, results):
    parts = [_U16.pack(len(reqs))]
    for req, (kind, a, b) in zip(reqs, results):
        if kind == _OK:
            parts.append(struct.pack(">QBH", req.id, _OK, len(a)) + a + _U32.pack(len(b)))
            parts.append(b)
        elif kind == _REFUSED:
            msg = _cut(str(b).encode("utf-8"), 65536)
            parts.append(struct.pack(">QBHI", req.id, _REFUSED, a, len(msg)) + msg)
        else:
            msg, tb = _cut(a.encode("utf-8"), 65536), _cut(b.encode("utf-8"), 65536)
            parts.append(struct.pack(">QBI", req.id, _FAILED, len(msg)) + msg
                         + _U32.pack(len(tb)) + tb)
    size = 1 + sum(len(p) for p in parts)
    if size > conn.max_frame:
        message = (f"batch reply too large: {size} bytes, the largest frame is "
                   f"{conn.max_frame} bytes (PADDOCK_MAX_FRAME)").encode("utf-8")
        parts = [_U16.pack(len(reqs))] + [
            struct.pack(">QBI", r.id, _FAILED, len(message)) + message + _U32.pack(0)
            for r in reqs]
    conn.send(BATCH_REPLY, b"".join(parts))


def _is_stream(value):
    return inspect.isgenerator(value)


def _chunk(value):
    """A yielded value -> (content type, bytes): bytes as they are, str as UTF-8, a
    Response with its own type, anything else as one JSON line (NDJSON)."""
    ctype, body = _encode(value)
    if ctype == "application/json" and not isinstance(value, Response):
        return "application/x-ndjson", body + b"\n"
    return ctype, body


def _cancel_pending(conn, rid):
    """True when the daemon has sent CANCEL for stream `rid` (checked without
    waiting); exits on end-of-file or SHUTDOWN, like the main loop."""
    while True:
        if not conn._buf and (conn._poll is None or not conn._poll.poll(0)):
            return False
        ftype, data = _next_frame(conn)
        if ftype != CANCEL or len(data) != 8:
            raise _ProtocolError(f"unexpected frame type 0x{ftype:02x} during a stream")
        (cid,) = struct.unpack(">Q", data)
        if cid == rid:
            return True
    return False


def _stream(conn, req, gen):
    """Sends a generator's values as one stream (docs/protocol.md, "Streams")."""
    rid = struct.pack(">Q", req.id)
    started = False
    try:
        for value in gen:
            ctype, data = _chunk(value)
            if not started:
                conn.send(STREAM_START, rid + _U16.pack(len(_ctype_bytes(ctype))),
                          _ctype_bytes(ctype))
                started = True
            if len(data) + 9 > conn.max_frame:
                raise ValueError(f"a chunk of {len(data)} bytes does not fit a frame "
                                 f"({conn.max_frame} bytes, PADDOCK_MAX_FRAME)")
            conn.send(CHUNK, rid, data)
            if _cancel_pending(conn, req.id):
                gen.close()  # GeneratorExit at its yield: its finally runs
                break
    except BadRequest as e:
        if not started:
            conn.bad_request(req.id, str(e) or "bad request")
            return
        conn.error(req.id, f"BadRequest: {e}", "")
        return
    except (_ProtocolError, BrokenPipeError, ConnectionResetError):
        raise
    except Exception as e:
        _handler_failed(conn, req, e, "streaming handler")
        return
    if not started:
        ctype = _ctype_bytes("application/octet-stream")
        conn.send(STREAM_START, rid + _U16.pack(len(ctype)), ctype)
    conn.send(STREAM_END, rid)


def _os_threads():
    """The process's OS threads (Python's and native ones): Linux from
    /proc/self/task, macOS from proc_pidinfo(PROC_PIDTASKINFO); Python's own count
    where neither answers."""
    if sys.platform.startswith("linux"):
        try:
            return len(os.listdir("/proc/self/task"))
        except OSError:
            pass
    elif sys.platform == "darwin":
        n = _darwin_threads()
        if n:
            return n
    return threading.active_count()


# struct proc_taskinfo (xnu bsd/sys/proc_info.h): six uint64_t, then int32_t
# pti_policy … pti_csw (nine), then pti_threadnum; 96 bytes in all.
_PROC_PIDTASKINFO = 4
_TASKINFO_SIZE = 96
_THREADNUM_OFFSET = 6 * 8 + 9 * 4


def _darwin_threads(proc_pidinfo=None):
    """pti_threadnum of this process, through libproc (in libSystem); None if the
    call fails."""
    import ctypes
    try:
        if proc_pidinfo is None:
            proc_pidinfo = ctypes.CDLL("/usr/lib/libSystem.B.dylib").proc_pidinfo
            proc_pidinfo.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint64,
                                     ctypes.c_void_p, ctypes.c_int]
            proc_pidinfo.restype = ctypes.c_int
        buf = ctypes.create_string_buffer(_TASKINFO_SIZE)
        if proc_pidinfo(os.getpid(), _PROC_PIDTASKINFO, 0, buf, _TASKINFO_SIZE) != _TASKINFO_SIZE:
            return None
        return struct.unpack_from("=i", buf.raw, _THREADNUM_OFFSET)[0]
    except (OSError, AttributeError):
        return None


def _cuda_initialised():
    """Whether this process initialised CUDA through PyTorch (asked only when torch
    is already imported: the guard never imports it)."""
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:
        return False


def _fork_site():
    """file:line in function of the innermost caller outside the standard library."""
    import sysconfig
    stdlib = sysconfig.get_paths()["stdlib"]
    here = os.path.dirname(os.path.abspath(__file__))
    for fs in reversed(traceback.extract_stack()[:-2]):
        path = os.path.abspath(fs.filename)
        if not path.startswith(stdlib) and not path.startswith(here):
            return f"{fs.filename}:{fs.lineno} in {fs.name}"
    return "an unknown call site"


def _install_fork_guard(conn):
    """Warns (stderr and FORK_WARNING) when this process forks with several OS
    threads: the child gets only the forking thread, and a lock another one held stays
    locked there for ever (docs/protocol.md, version 5)."""
    if not hasattr(os, "register_at_fork"):
        return
    me = os.getpid()

    def before():
        if os.getpid() != me:
            return  # a child of ours forking: not the worker's own fork
        n = _os_threads()
        cuda = _cuda_initialised()
        if n <= 1 and not cuda:
            return
        site = _fork_site()
        if cuda:
            _log(f"paddock: fork guard: worker pid {me} is forking at {site} after it "
                 "initialised CUDA: the child cannot use CUDA (PyTorch: \"Cannot re-initialize "
                 "CUDA in forked subprocess\"). Use multiprocessing's 'spawn' start method "
                 "(docs/operations.md, \"Forks\").")
        if n > 1:
            _log(f"paddock: fork guard: worker pid {me} is forking with {n} OS threads at {site}. "
                 "The child gets only the forking thread; a lock any other thread held "
                 "(OpenMP, BLAS, a logging or gRPC thread) stays locked in it, and the child "
                 "may hang. Use multiprocessing's 'forkserver' or 'spawn' start method, with "
                 "paddock.serve() under `if __name__ == \"__main__\":` "
                 "(docs/operations.md, \"Forks\").")
        try:
            warning = {"threads": n, "site": site, "pid": me}
            if cuda:
                warning["cuda"] = True
            conn.send(FORK_WARNING, json.dumps(warning).encode("utf-8"))
        except OSError:
            pass

    os.register_at_fork(before=before)
