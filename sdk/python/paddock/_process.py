"""The worker process's own helpers: its log (stderr, captured by the daemon), exiting with a message, reading its settings from the environment, and the next frame from the daemon."""

import os
import sys
import traceback

from ._protocol import SHUTDOWN


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


def _env_int(name, default):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        _exit(2, f"{name}={raw!r} is not an integer")


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
