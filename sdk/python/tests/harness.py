"""What the SDK's tests share: a real worker process driven through a socketpair,
playing the daemon's side of docs/protocol.md (`Worker`), the frames' layouts, and
`WorkerCase`, whose helpers start workers and check their answers.

    python3 -m unittest discover -s sdk/python/tests

Every wait is bounded: socket timeouts and subprocess timeouts, never bare sleeps.
"""
import json
import os
import socket
import struct
import subprocess
import sys
import tomllib
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.dirname(HERE)
ROOT = os.path.dirname(os.path.dirname(SDK))  # the repository
WORKERS = os.path.join(HERE, "workers")
sys.path.insert(0, SDK)

import paddock  # noqa: E402

TIMEOUT = 10.0  # seconds: generous, only reached when something is broken

HELLO, READY, SETUP_FAILED = 0x01, 0x02, 0x03
REQUEST, REPLY, ERROR, SHUTDOWN = 0x10, 0x11, 0x12, 0x20
BAD_REQUEST = 0x16
BATCH, BATCH_REPLY = 0x17, 0x18
REFUSED = 0x19
STREAM_START, CHUNK, STREAM_END, CANCEL = 0x13, 0x14, 0x15, 0x21


def str16(s):
    b = s.encode("utf-8")
    return struct.pack(">H", len(b)) + b


class Worker:
    """A worker process and the daemon's end of its socket."""

    def __init__(self, script, env=None, fd=True):
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith("PADDOCK_")}
        full_env["PYTHONPATH"] = SDK
        if fd:
            full_env["PADDOCK_FD"] = str(child.fileno())
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(WORKERS, script)],
            pass_fds=[child.fileno()] if fd else [], env=full_env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        child.close()
        self.stdout = self.stderr = None

    def send(self, ftype, payload=b""):
        self.sock.sendall(struct.pack(">IB", len(payload) + 1, ftype) + payload)

    def request(self, rid, method, body=b"", content_type="application/json",
                deadline_ms=5000):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send(REQUEST, struct.pack(">QI", rid, deadline_ms) + str16(method)
                  + str16(content_type) + body)

    def batch(self, method, items, deadline_ms=5000):
        """Sends a BATCH of (id, content type, body) items."""
        payload = str16(method) + struct.pack(">H", len(items))
        for rid, ctype, body in items:
            if isinstance(body, str):
                body = body.encode("utf-8")
            payload += (struct.pack(">QI", rid, deadline_ms) + str16(ctype)
                        + struct.pack(">I", len(body)) + body)
        self.send(BATCH, payload)

    def batch_reply(self):
        """{id: (outcome, ...)} of the next frame, which must be a BATCH_REPLY."""
        ftype, p = self.recv()
        if ftype != BATCH_REPLY:
            raise AssertionError(f"expected BATCH_REPLY, got 0x{ftype:02x}: {p[:200]!r}")
        (count,) = struct.unpack_from(">H", p, 0)
        at, out = 2, {}
        for _ in range(count):
            rid, outcome = struct.unpack_from(">QB", p, at)
            at += 9
            if outcome == 0:
                (clen,) = struct.unpack_from(">H", p, at)
                ctype = p[at + 2:at + 2 + clen].decode()
                at += 2 + clen
                (blen,) = struct.unpack_from(">I", p, at)
                out[rid] = (0, ctype, p[at + 4:at + 4 + blen])
                at += 4 + blen
            elif outcome == 1:
                status, mlen = struct.unpack_from(">HI", p, at)
                out[rid] = (1, status, p[at + 6:at + 6 + mlen].decode())
                at += 6 + mlen
            else:
                (mlen,) = struct.unpack_from(">I", p, at)
                msg = p[at + 4:at + 4 + mlen].decode()
                at += 4 + mlen
                (tlen,) = struct.unpack_from(">I", p, at)
                out[rid] = (2, msg, p[at + 4:at + 4 + tlen].decode())
                at += 4 + tlen
        if at != len(p):
            raise AssertionError(f"{len(p) - at} bytes left over in BATCH_REPLY")
        if len(out) != count:
            raise AssertionError("an id answered twice")
        return out

    def read_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"socket closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv(self):
        (length,) = struct.unpack(">I", self.read_exact(4))
        frame = self.read_exact(length)
        return frame[0], frame[1:]

    def at_eof(self):
        return self.sock.recv(1) == b""

    def handshake(self):
        ftype, p = self.recv()
        assert ftype == HELLO, ftype
        ftype, p = self.recv()
        assert ftype == READY, (ftype, p)
        return json.loads(p)

    def wait(self):
        """The exit status; also collects stdout and stderr."""
        self.stdout, self.stderr = self.proc.communicate(timeout=TIMEOUT)
        self.stdout, self.stderr = self.stdout.decode(), self.stderr.decode()
        return self.proc.returncode

    def close(self):
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=TIMEOUT)


def parse_reply(p):
    (rid,) = struct.unpack_from(">Q", p, 0)
    (clen,) = struct.unpack_from(">H", p, 8)
    return rid, p[10:10 + clen].decode(), p[10 + clen:]


def parse_error(p):
    rid, mlen = struct.unpack_from(">QI", p, 0)
    return rid, p[12:12 + mlen].decode(), p[12 + mlen:].decode()


def parse_bad_request(p):
    """docs/protocol.md: `id: u64`, then the UTF-8 message to the end of the frame."""
    (rid,) = struct.unpack_from(">Q", p, 0)
    return rid, p[8:].decode()  # strict UTF-8


class WorkerCase(unittest.TestCase):
    def start(self, script="basic_worker.py", **kw):
        w = Worker(script, **kw)
        self.addCleanup(w.close)
        return w

    def call(self, w, rid, method, body=b"", **kw):
        w.request(rid, method, body, **kw)
        return w.recv()

    def answer(self, w, rid, method, body, ftype, parse, **kw):
        """Sends a request and checks that the answer is a frame of type `ftype`
        for it; returns the rest of what `parse` reads from the payload."""
        got, p = self.call(w, rid, method, body, **kw)
        self.assertEqual(got, ftype, p)
        got_id, *rest = parse(p)
        self.assertEqual(got_id, rid)
        return rest

    def reply(self, w, rid, method, body=b"", **kw):
        ctype, out = self.answer(w, rid, method, body, REPLY, parse_reply, **kw)
        return ctype, out

    def error(self, w, rid, method, body=b""):
        message, tb = self.answer(w, rid, method, body, ERROR, parse_error)
        return message, tb

    def bad_request(self, w, rid, method, body=b""):
        (message,) = self.answer(w, rid, method, body, BAD_REQUEST, parse_bad_request)
        return message

    def stop(self, w):
        """Shuts the worker down; its stderr (what the daemon would log)."""
        w.send(SHUTDOWN)
        self.assertEqual(w.wait(), 0)
        return w.stderr

    def read_stream(self, w, rid):
        """The frames of stream `rid` up to its end: (content type, chunks, end)."""
        ftype, p = w.recv()
        self.assertEqual(ftype, STREAM_START, p)
        got_id, clen = struct.unpack_from(">QH", p, 0)
        self.assertEqual(got_id, rid)
        ctype = p[10:10 + clen].decode()
        chunks = []
        while True:
            ftype, p = w.recv()
            (got_id,) = struct.unpack_from(">Q", p, 0)
            self.assertEqual(got_id, rid)
            if ftype == CHUNK:
                chunks.append(p[8:])
            else:
                return ctype, chunks, (ftype, p[8:])
