"""The worker of bench/jobs_cluster.py: `run` notes when it started (time.time(),
the machine's clock, which the benchmark's client shares) and which process ran
it, sleeps `s` seconds, and answers both."""
import os
import time

import paddock


class Stamp:
    @paddock.handler
    def run(self, req):
        started = time.time()
        body = req.json()
        time.sleep(float(body.get("s", 0)))
        return {"started": started, "pid": os.getpid()}


paddock.serve(Stamp())
