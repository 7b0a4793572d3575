"""A worker for the SDK tests: one handler per kind of return value."""
import os
import sys
import threading
import time

import paddock


class Basic:
    def setup(self):
        self.setup_thread = threading.current_thread() is threading.main_thread()
        self.calls = 0
        self.text = "an attribute named like a handler must not hide the handler"

    @paddock.handler
    def predict(self, req):
        self.calls += 1
        data = req.json()
        return {"echo": data, "calls": self.calls, "pid": os.getpid(),
                "content_type": req.content_type, "method": req.method, "id": req.id,
                "deadline_in": round(req.deadline - time.monotonic(), 3)}

    @paddock.handler(idempotent=True)
    def raw(self, req):
        return req.body

    @paddock.handler
    def text(self, req):
        return "héllo " + req.text()

    @paddock.handler
    def typed(self, req):
        return paddock.Response(req.body, "image/png")

    @paddock.handler
    def nothing(self, req):
        return None

    @paddock.handler
    def boom(self, req):
        raise ValueError("bad input: " + req.text())

    @paddock.handler
    def needs_text(self, req):
        data = req.json()
        if not isinstance(data, dict) or "text" not in data:
            raise paddock.BadRequest("need a 'text' field")
        return {"text": data["text"]}

    @paddock.handler
    def refuse(self, req):
        raise paddock.Error("not processable", status=int(req.text()))

    @paddock.handler
    def long_bad_request(self, req):
        raise paddock.BadRequest("é" * 5000)

    @paddock.handler
    def long_error(self, req):
        raise RuntimeError("é" * 5000)

    @paddock.handler
    def nan(self, req):
        return float("nan")

    @paddock.handler
    def big(self, req):
        return b"x" * int(req.text())

    @paddock.handler(idempotent=True)
    def thread(self, req):
        return {"main": threading.current_thread() is threading.main_thread(),
                "setup_main": self.setup_thread, "threads": threading.active_count()}

    @paddock.batch(max_size=8, max_wait="2ms")
    def upper(self, reqs):
        return [r.text().upper() if r.body else paddock.Error("empty text", status=422)
                for r in reqs]

    @paddock.batch
    def wrong_count(self, reqs):
        return ["only one"] + (["extra"] if len(reqs) == 1 else [])

    @paddock.batch(max_size=4)
    def explode(self, reqs):
        raise RuntimeError(f"boom on {len(reqs)}")

    @paddock.batch
    def refuse_all(self, reqs):
        raise paddock.BadRequest("no batch today")

    @paddock.handler
    def count(self, req):
        try:
            for i in range(int(req.text())):
                yield f"{i}\n"
        finally:
            sys.stderr.write(f"count finally ran\n")
            sys.stderr.flush()

    @paddock.handler
    def fail_after(self, req):
        yield b"a"
        yield b"b"
        raise RuntimeError("mid-stream")

    @paddock.handler
    def objs(self, req):
        yield {"a": 1}
        yield [1, 2]

    def helper(self, req):  # not a handler
        return "no"


paddock.serve(Basic())
