#!/usr/bin/env python3
"""A/B of two paddock builds on the gateway's echo load, alternating in one run (the
machine drifts by a third over minutes: only pairs of the same round compare).

    python3 bench/ab_daemon.py A_BINARY A_CONFIG B_BINARY B_CONFIG [--rounds 3] [--duration 10]

Each config is a copy of bench/paddock.toml next to its own SDK (an older build may
speak an older protocol). Prints req/s and the daemon's CPU microseconds per request
(schedstat of every thread) for each build in each round, and the B/A ratios.
"""
import argparse
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BENCH, free_port, wait_port  # noqa: E402
from gateway import cpu_ns  # noqa: E402


def run_one(binary, config, duration):
    port = free_port()
    subprocess.run([binary, "-c", config, "--port", str(port), "start"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        pid = int(subprocess.run([binary, "-c", config, "--port", str(port), "status", "--json"],
                                 capture_output=True, text=True).stdout.split('"pid":')[1].split(",")[0])
        before = cpu_ns(pid)
        out = subprocess.run(["wrk", "-t2", "-c32", f"-d{duration}s", "-s", os.path.join(BENCH, "post.lua"),
                              f"http://127.0.0.1:{port}/v1/bench"], capture_output=True, text=True).stdout
        used = cpu_ns(pid) - before
        reqs = int(re.search(r"(\d+) requests in", out).group(1))
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        return rps, used / 1000 / max(reqs, 1)
    finally:
        subprocess.run([binary, "-c", config, "--port", str(port), "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("a_bin"); p.add_argument("a_cfg"); p.add_argument("b_bin"); p.add_argument("b_cfg")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10)
    a = p.parse_args()
    print("round  build   req/s   daemon us/req")
    for r in range(1, a.rounds + 1):
        ra = run_one(a.a_bin, a.a_cfg, a.duration)
        rb = run_one(a.b_bin, a.b_cfg, a.duration)
        print(f"{r}      A    {ra[0]:8.0f}   {ra[1]:6.1f}")
        print(f"{r}      B    {rb[0]:8.0f}   {rb[1]:6.1f}   B/A req/s {rb[0] / ra[0]:.2f}x, us/req {rb[1] / ra[1]:.2f}x")


if __name__ == "__main__":
    main()
