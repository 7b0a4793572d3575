"""Serving: `serve(obj)` checks the worker's handlers, runs `setup()` and then answers the daemon's requests one at a time, on the main thread."""

import json
import os
import platform
import socket
import struct
import sys
import threading
import traceback

from ._api import BadRequest, Error, _MARK, _ctype_bytes, _cut, _encode
from ._protocol import (
    BATCH,
    DEFAULT_MAX_FRAME,
    HELLO,
    PROTOCOL_VERSION,
    READY,
    REQUEST,
    SETUP_FAILED,
    _Conn,
    _FAILED,
    _ProtocolError,
    _REFUSED,
    __version__,
    _parse_request,
)
from ._process import _env_int, _exit, _handler_failed, _next_frame
from ._batch import _parse_batch, _run_batch, _send_batch_reply
from ._stream import _is_stream, _stream
from ._version import SDK_PATH
from ._fork_guard import _install_fork_guard


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


_USAGE = """\
{script} is a paddock worker: it talks to the paddock daemon over an inherited socket
(PADDOCK_FD), so it is not meant to be run by hand. Declare it in a paddock.toml:

    [services.{name}]
    command = ["python3", "{script}"]

and start it with `paddock run` (or `paddock start`) in that folder.
"""


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
    meta = {"sdk": "python", "sdk_version": __version__, "sdk_path": SDK_PATH,
            "python": platform.python_version(), "executable": sys.executable}
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
