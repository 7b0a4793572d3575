"""The worker protocol (docs/protocol.md): frame types, the version this SDK speaks, and the connection to the daemon that reads and writes frames."""

import select
import struct
import time

from ._api import Request, _cut

from ._version import __version__  # noqa: F401  (this SDK's, said in HELLO)

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
