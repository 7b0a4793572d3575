"""A worker without any @paddock.handler method: it fails before setup() runs."""
import paddock


class Empty:
    def setup(self):
        print("SETUP RAN", flush=True)

    def predict(self, req):
        return {}


paddock.serve(Empty())
