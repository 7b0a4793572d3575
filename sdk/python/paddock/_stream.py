"""Streamed answers (version 4): a generator handler's items sent as CHUNKs as they are made, and a CANCEL that closes the generator."""

import inspect
import struct

from ._api import BadRequest, Response, _ctype_bytes, _encode
from ._protocol import (
    CANCEL,
    CHUNK,
    STREAM_END,
    STREAM_START,
    _ProtocolError,
    _U16,
)
from ._process import _handler_failed, _next_frame


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
