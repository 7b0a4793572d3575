"""The streaming benchmark's generators under LitServe 0.2.19 (stream=True, 2
workers on the CPU): the same chunks as bench/stream_worker.py.

    python3 litserve_stream_app.py PORT
"""
import sys
import time

import litserve as ls


class Gen(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return request

    def predict(self, x):
        n = int(x.get("n", 1000))
        slow = x.get("mode") == "slow"
        for i in range(n):
            if slow:
                time.sleep(0.02)
            yield b"token %06d\n" % i

    def encode_response(self, output):
        for chunk in output:
            yield chunk


if __name__ == "__main__":
    server = ls.LitServer(Gen(stream=True), accelerator="cpu", workers_per_device=2, timeout=60)
    server.run(port=int(sys.argv[1]), generate_client_file=False, log_level="warning")
