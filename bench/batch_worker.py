"""The batching benchmark's model under paddock: one batched handler costing 5 ms +
0.2 ms per item (time.sleep), one call at a time per process."""
import time

import paddock


class Model:
    @paddock.batch(max_size=16)
    def predict(self, reqs):
        time.sleep(0.005 + 0.0002 * len(reqs))
        return [{"ok": True, "n": len(r.body)} for r in reqs]


paddock.serve(Model())
