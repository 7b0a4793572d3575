"""A worker without any @paddock.handler method: a setup failure."""
import paddock


class Empty:
    def predict(self, req):
        return {}


paddock.serve(Empty())
