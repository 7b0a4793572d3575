"""The paddock side of the jobs benchmarks: a no-op handler, and `pause`, which
sleeps {"s": seconds} first (bench/long_poll.py: the waiter is there before the end)."""
import time

import paddock


class Noop:
    @paddock.handler
    def predict(self, req):
        return b"ok"

    @paddock.handler
    def pause(self, req):
        time.sleep(req.json().get("s", 0.02))
        return b"ok"


paddock.serve(Noop())
