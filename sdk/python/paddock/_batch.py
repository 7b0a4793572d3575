"""Batched handlers (version 3): a BATCH's requests in one call of the handler, one outcome each in the BATCH_REPLY."""

import struct
import time
import traceback

from ._api import BadRequest, Error, Request, _ctype_bytes, _cut, _encode
from ._protocol import BATCH_REPLY, _FAILED, _OK, _ProtocolError, _REFUSED, _U16
from ._process import _log


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
