"""`paddock.AsyncClient`: `paddock.Client`'s methods as coroutines and async
iterators, on asyncio's own streams (standard library only: no extra to install).

    async with paddock.AsyncClient() as client:
        r = await client.call("sentiment", json={"text": "hi"})
        job = await client.submit("ingest", json={"doc": "..."})
        print(await job.result())
        async with client.stream("tts", json={"text": "Hello."}) as s:
            async for chunk in s:
                ...

It speaks just enough HTTP/1.1 for the paddock daemon: keep-alive connections
(Content-Length bodies), chunked answers for streams, one request per connection at a
time. The invariants are the sync client's (`_client.py`): an idle connection that
broke is replaced and the request sent again; a stream's connection is closed when
the stream is, which cancels the worker's generator; waiting for a job is the
daemon's long-poll.
"""

import asyncio
import os
import urllib.parse

from ._client import (
    _FINISHED,
    ClientResponse,
    body_and_type,
    default_url,
    job_path,
    parse_event,
    result_steps,
    service_path,
    submit_request,
)
from ._client_errors import (
    ConnectionFailed,
    Overloaded,
    RequestRejected,
    ServerError,
    from_answer,
)



class _Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    def close(self):
        self.writer.close()


async def _head(conn):
    """The answer's status and headers (lower-case names)."""
    line = await conn.reader.readline()
    if not line:
        raise ConnectionResetError("the daemon closed the connection")
    parts = line.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    headers = {}
    while True:
        line = await conn.reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _chunk(reader):
    """The next chunk of a chunked body (b"" at its end); IncompleteReadError when the
    body stops without its terminator."""
    size_line = await reader.readline()
    if not size_line:
        raise asyncio.IncompleteReadError(b"", None)
    size = int(size_line.split(b";")[0].strip() or b"0", 16)
    if size == 0:
        await reader.readline()  # the empty line after the last chunk
        return b""
    data = await reader.readexactly(size)
    await reader.readexactly(2)
    return data


class AsyncStream:
    """A streamed answer: `async for` its chunks (bytes), or its events (dicts with
    `event`, `data`, `id`) with `sse=True`. `aclose()` — or leaving `async with` —
    closes the connection, and the daemon cancels the worker's generator."""

    def __init__(self, opening, sse):
        self._opening = opening
        self._conn = None
        self._sse = sse
        self._buf = b""
        self._whole_read = False
        self.status = None
        self.headers = {}
        self.closed = False

    async def _open(self):
        if self._conn is None:
            self._conn, self.status, self.headers = await self._opening
        return self._conn

    async def __aenter__(self):
        await self._open()
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    def __aiter__(self):
        return self

    async def _read(self, conn):
        """The next piece of the body; b"" at its end (a body that is not chunked
        comes whole, once)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            return await _chunk(conn.reader)
        if self._whole_read:
            return b""
        self._whole_read = True
        if "content-length" in self.headers:
            return await conn.reader.readexactly(int(self.headers["content-length"]))
        return await conn.reader.read()

    async def __anext__(self):
        if self.closed:
            raise StopAsyncIteration
        conn = await self._open()
        try:
            if not self._sse:
                data = await self._read(conn)
                if not data:
                    await self.aclose()
                    raise StopAsyncIteration
                return data
            return await self._next_event(conn)
        except (asyncio.IncompleteReadError, ValueError):
            await self.aclose()
            raise ServerError("the stream ended in error: the worker failed after what was sent "
                              "(see paddock logs)", status=self.status) from None
        except OSError as e:
            await self.aclose()
            raise ConnectionFailed(f"the stream's connection broke: {e}") from e

    async def _next_event(self, conn):
        while True:
            cut = self._buf.find(b"\n\n")
            if cut >= 0:
                event = parse_event(self._buf[:cut])
                self._buf = self._buf[cut + 2:]
                if event["event"] == "done":
                    await self.aclose()
                    raise StopAsyncIteration
                if event["event"] == "error":
                    await self.aclose()
                    raise ServerError(f"the stream ended in error: {event['data']}", status=self.status)
                return event
            more = await self._read(conn)
            if not more:
                await self.aclose()
                raise ConnectionFailed("the event stream ended without `event: done`")
            self._buf += more

    async def aclose(self):
        if not self.closed:
            self.closed = True
            if self._conn is not None:
                self._conn.close()


class AsyncJob:
    """A submitted job: `id`, `await status()`, `await result(timeout=None)`,
    `await cancel()`."""

    def __init__(self, client, view):
        self._client = client
        self.id = view["id"]
        self.view = view

    @property
    def state(self):
        return self.view["state"]

    def done(self):
        return self.state in _FINISHED

    async def status(self, wait=None):
        self.view = await self._client._job(self.id, wait)
        return self.view

    async def result(self, timeout=None):
        """`Job.result`, awaited."""
        steps = result_steps(self, timeout, self._client.timeout)
        try:
            request = next(steps)
            while True:
                path, socket_timeout = request
                try:
                    answer = await self._client._request("GET", path, timeout=socket_timeout)
                except RequestRejected as e:
                    answer = e
                request = steps.send(answer)
        except StopIteration as done:
            return done.value

    async def cancel(self):
        self.view = (await self._client._request("DELETE", job_path(self.id)[0])).json()
        return self.view

    def __repr__(self):
        return f"<paddock.AsyncJob {self.id} {self.state}>"


class AsyncClient:
    """`paddock.Client` for asyncio. One instance per event loop."""

    def __init__(self, url=None, token=None, timeout=60.0, max_idle=32):
        self.url = (url or default_url()).rstrip("/")
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"paddock.AsyncClient needs an http:// URL, not {self.url!r}")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.token = token if token is not None else os.environ.get("PADDOCK_TOKEN")
        self.timeout = timeout
        self.requests = 0
        self._idle = []
        self._max_idle = max_idle

    async def call(self, service, body=None, *, handler=None, json=None, headers=None,
                   timeout=None, retries=0):
        data, hdrs = body_and_type(body, json, headers)
        path = service_path("/v1/", service, handler)
        for attempt in range(retries + 1):
            try:
                return await self._request("POST", path, data, hdrs, timeout)
            except Overloaded as e:
                if attempt == retries or e.retry_after is None:
                    raise
                await asyncio.sleep(e.retry_after)  # the daemon's own instruction

    def stream(self, service, body=None, *, handler=None, json=None, headers=None, timeout=None,
               sse=False):
        data, hdrs = body_and_type(body, json, headers)
        if sse:
            hdrs["accept"] = "text/event-stream"
        hdrs["connection"] = "close"

        async def opening():
            conn, status, head = await self._send("POST", service_path("/v1/", service, handler),
                                                  data, hdrs, timeout, pooled=False)
            if status >= 300:
                content = await self._body(conn, head)
                conn.close()
                raise from_answer(status, head, content)
            return conn, status, head

        return AsyncStream(opening(), sse)

    async def submit(self, service, body=None, *, handler=None, json=None, headers=None,
                     idempotency_key=None, delay=None, run_at=None, priority=None):
        path, data, hdrs = submit_request(service, body, handler, json, headers,
                                          idempotency_key, delay, run_at, priority)
        return AsyncJob(self, (await self._request("POST", path, data, hdrs)).json())

    async def job(self, job_id):
        return AsyncJob(self, await self._job(job_id, None))

    async def _job(self, job_id, wait):
        path, socket_timeout = job_path(job_id, wait, self.timeout)
        return (await self._request("GET", path, timeout=socket_timeout)).json()

    async def _body(self, conn, head):
        if "content-length" in head:
            return await conn.reader.readexactly(int(head["content-length"]))
        if head.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                c = await _chunk(conn.reader)
                if not c:
                    return out
                out += c
        return await conn.reader.read()

    async def _request(self, method, path, data=b"", headers=None, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(self._exchange(method, path, data, headers or {}),
                                          timeout)
        except asyncio.TimeoutError:
            raise ConnectionFailed(f"{method} {self.url}{path}: no answer within {timeout}s") from None

    async def _exchange(self, method, path, data, headers):
        conn, status, head = await self._send(method, path, data, headers, None)
        try:
            content = await self._body(conn, head)
        except (OSError, asyncio.IncompleteReadError) as e:
            conn.close()
            raise ConnectionFailed(f"{method} {path}: the answer broke off: {e}") from e
        if head.get("connection", "").lower() == "close" or len(self._idle) >= self._max_idle:
            conn.close()
        else:
            self._idle.append(conn)
        if status >= 300:
            raise from_answer(status, head, content)
        return ClientResponse(status, head, content)

    async def _send(self, method, path, data, headers, timeout, pooled=True):
        hdrs = {"host": f"{self.host}:{self.port}", "content-length": str(len(data)), **headers}
        if self.token:
            hdrs.setdefault("authorization", f"Bearer {self.token}")
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        for fresh in (False, True):
            reused = pooled and not fresh and bool(self._idle)
            try:
                if reused:
                    conn = self._idle.pop()
                else:
                    opening = asyncio.open_connection(self.host, self.port)
                    reader, writer = await (asyncio.wait_for(opening, timeout) if timeout else opening)
                    conn = _Conn(reader, writer)
            except (OSError, asyncio.TimeoutError) as e:
                raise ConnectionFailed(f"{method} {self.url}{path}: {e!r}") from e
            try:
                self.requests += 1
                conn.writer.write(head.encode("latin-1") + data)
                await conn.writer.drain()
                status, rhead = await _head(conn)
                return conn, status, rhead
            except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as e:
                conn.close()
                if reused:
                    continue  # closed while idle: the daemon never read this request
                raise ConnectionFailed(f"{method} {self.url}{path}: {e!r}") from e
            except OSError as e:
                conn.close()
                raise ConnectionFailed(f"{method} {self.url}{path}: {e}") from e
        raise AssertionError("unreachable")

    async def close(self):
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def __repr__(self):
        return f"<paddock.AsyncClient {self.url}>"
