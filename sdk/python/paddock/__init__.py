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

This package implements docs/protocol.md (version 6: version 1, BAD_REQUEST, batches,
streams, FORK_WARNING and REFUSED): `_api` (the decorators and types a worker uses),
`_protocol` (frames and the connection), `_process` (the log, exits, settings),
`_serve` (`serve` and the request loop), `_batch`, `_stream` and `_fork_guard`. This
module is its public face. Its invariants:

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

# The public names; the private ones after them are for the SDK's own tests.
from ._api import BadRequest, Error, Request, Response, batch, handler
from ._protocol import DEFAULT_MAX_FRAME, PROTOCOL_VERSION, __version__  # noqa: F401
from ._serve import serve
from ._api import _wait_ms  # noqa: F401
from ._batch import _U32, _send_batch_reply  # noqa: F401
from ._fork_guard import _cuda_initialised, _darwin_threads  # noqa: F401

__all__ = ["handler", "batch", "serve", "Request", "Response", "BadRequest", "Error",
           "PROTOCOL_VERSION", "__version__",
           "Client", "AsyncClient", "ClientResponse", "Job", "AsyncJob", "Stream", "AsyncStream",
           "wait", "as_completed", "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED",
           "ClientError", "ConnectionFailed", "RequestRejected", "NotFound", "Unauthorized",
           "Overloaded", "TimedOut", "WorkerCrashed", "ServerError", "JobFailed", "JobCancelled",
           "JobTimeout"]

# The client side (`paddock.Client` and the rest) loads on first use: a worker, which
# imports this package at every start, never pays for http.client, threads or asyncio.
_CLIENT = {
    "_client": ("Client", "ClientResponse", "Job", "Stream"),
    "_aclient": ("AsyncClient", "AsyncJob", "AsyncStream"),
    "_client_wait": ("wait", "as_completed", "FIRST_COMPLETED", "FIRST_EXCEPTION",
                     "ALL_COMPLETED"),
    "_client_errors": ("ClientError", "ConnectionFailed", "RequestRejected", "NotFound",
                       "Unauthorized", "Overloaded", "TimedOut", "WorkerCrashed", "ServerError",
                       "JobFailed", "JobCancelled", "JobTimeout"),
}


def __getattr__(name):
    for module, names in _CLIENT.items():
        if name in names:
            import importlib
            value = getattr(importlib.import_module(f".{module}", __name__), name)
            globals()[name] = value
            return value
    raise AttributeError(f"module 'paddock' has no attribute {name!r}")
