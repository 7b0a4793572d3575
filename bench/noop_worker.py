"""The paddock side of the jobs benchmark: a no-op handler."""
import paddock


class Noop:
    @paddock.handler
    def predict(self, req):
        return b"ok"


paddock.serve(Noop())
