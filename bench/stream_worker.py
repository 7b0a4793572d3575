"""The streaming benchmark's generators under paddock: `fast` yields N small chunks
as fast as it can, `slow` sleeps 20 ms before each (a model making tokens)."""
import time

import paddock


class Gen:
    @paddock.handler
    def fast(self, req):
        n = int(req.json().get("n", 1000))
        for i in range(n):
            yield b"token %06d\n" % i

    @paddock.handler
    def slow(self, req):
        n = int(req.json().get("n", 50))
        for i in range(n):
            time.sleep(0.02)
            yield b"token %06d\n" % i


paddock.serve(Gen())
