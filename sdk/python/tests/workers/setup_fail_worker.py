"""A worker whose setup raises: the SDK must send SETUP_FAILED and exit 1."""
import paddock


def load_weights():
    raise FileNotFoundError("weights.bin is missing")


class Broken:
    def setup(self):
        load_weights()

    @paddock.handler
    def predict(self, req):
        return {}


paddock.serve(Broken())
