"""Just enough HTTP/1.1 for `paddock.Client`: one keep-alive connection to the daemon,
requests written in one `sendall`, answers read through a buffered file.

Why not `http.client`: it parses every answer's headers with the `email` package,
which costs about 100 µs a request on a small machine — as much as the daemon spends
answering. This reads the status line and headers itself and the body by its
`Content-Length` or its chunks, which is all the daemon sends.

Invariants: an answer is read whole (or the connection closed) before the connection
is used again; an end of file before an answer's status line is `Stale` (the daemon
closed an idle connection: the request may be sent again on a new one); a chunked
body that ends without its terminator raises `CutOff`.
"""

import select
import socket


class Stale(ConnectionError):
    """The connection was closed before an answer began."""


class CutOff(ConnectionError):
    """A chunked answer ended without its last chunk (the stream failed)."""


class Conn:
    """One connection; not shared between threads at the same time."""

    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")
        self.closed = False

    def settimeout(self, timeout):
        self.sock.settimeout(timeout)

    def send(self, method, target, host, body, headers):
        lines = [f"{method} {target} HTTP/1.1", f"host: {host}",
                 f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def head(self):
        """The answer's status and headers (lower-case names)."""
        line = self.rfile.readline(65537)
        if not line:
            raise Stale("the daemon closed the connection")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ConnectionError(f"not an HTTP answer: {line[:80]!r}")
        status = int(parts[1])
        headers = {}
        while True:
            h = self.rfile.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def body(self, headers):
        """The whole body of an answer whose head was read."""
        if "content-length" in headers:
            n = int(headers["content-length"])
            data = self.rfile.read(n)
            if len(data) < n:
                raise CutOff(f"the answer ended after {len(data)} of {n} bytes")
            return data
        if headers.get("transfer-encoding", "").lower() == "chunked":
            out = []
            while True:
                c = self.chunk()
                if not c:
                    return b"".join(out)
                out.append(c)
        return self.rfile.read()

    def chunk(self):
        """The next chunk of a chunked body; b"" at its end."""
        size_line = self.rfile.readline(1026)
        if not size_line:
            raise CutOff("the answer was cut off")
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            raise CutOff(f"a broken chunk header: {size_line[:40]!r}") from None
        if size == 0:
            self.rfile.readline(1026)  # the blank line after the last chunk
            return b""
        data = self.rfile.read(size)
        if len(data) < size or self.rfile.read(2) != b"\r\n":
            raise CutOff("the answer was cut off inside a chunk")
        return data

    def dead(self):
        """Whether an idle connection was closed by the daemon (or has bytes nobody
        asked for): it must not carry a request."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                # Wakes a thread blocked reading it (a stream closed from elsewhere).
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                self.rfile.close()
            finally:
                self.sock.close()
