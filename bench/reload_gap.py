#!/usr/bin/env python3
"""Counts answered and failed GETs (4 client threads) around one `paddock reload`.

Usage: python3 bench/reload_gap.py PORT CONFIG   (with the instance started, PORT the
service's port; paddock from target/debug unless $PADDOCK names another).
"""
import os, sys, threading, urllib.request, time, subprocess
port = int(sys.argv[1]); cfg = sys.argv[2]
stop = False; ok = 0; bad = 0
def run():
    global ok, bad
    while not stop:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read(); ok += 1
        except Exception as e:
            bad += 1
ts = [threading.Thread(target=run) for _ in range(4)]
[t.start() for t in ts]
time.sleep(0.5)
subprocess.run([os.environ.get("PADDOCK", "target/debug/paddock"), "-c", cfg, "reload"], capture_output=True)
time.sleep(0.5)
stop = True
[t.join() for t in ts]
print(f"ok={ok} failed={bad}")
