"""The batching benchmark's model under LitServe: the same cost (5 ms + 0.2 ms per
item, time.sleep), max_batch_size=16, batch_timeout=5 ms, 2 workers on the CPU.

    python3 litserve_app.py PORT STATS_DIR

Each worker process writes its batch count and item count to STATS_DIR every 50
batches (cheap, so LitServe pays nearly nothing for being measured)."""
import os
import sys
import time

import litserve as ls

PORT, STATS = int(sys.argv[1]), sys.argv[2]


class Model(ls.LitAPI):
    def setup(self, device):
        self.batches = self.items = 0

    def decode_request(self, request):
        return request

    def predict(self, xs):
        time.sleep(0.005 + 0.0002 * len(xs))
        self.batches += 1
        self.items += len(xs)
        if self.batches % 50 == 0:
            with open(os.path.join(STATS, f"{os.getpid()}"), "w") as f:
                f.write(f"{self.batches} {self.items}")
        return [{"ok": True} for _ in xs]

    def encode_response(self, out):
        return out


if __name__ == "__main__":
    api = Model(max_batch_size=16, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=2, timeout=30)
    server.run(port=PORT, generate_client_file=False, log_level="warning")
