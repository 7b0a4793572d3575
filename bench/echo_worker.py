"""The paddock side of the gateway benchmark: echo, and a 10 ms blocking handler."""
import time

import paddock


class Bench:
    @paddock.handler
    def predict(self, req):
        return paddock.Response(req.body, req.content_type)

    @paddock.handler
    def sleep10(self, req):
        time.sleep(0.010)
        return paddock.Response(req.body, req.content_type)


paddock.serve(Bench())
