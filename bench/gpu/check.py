"""The GPU device check (issue 17), for a machine with an NVIDIA GPU and PyTorch,
with a paddock binary built elsewhere and carried over.

    PYTHON=/path/to/python-with-torch bash bench/gpu/check.sh

Each part prints what it measured and a PASS or FAIL line with its criterion; the
exit status is 1 if any part failed:

1. four PyTorch workers on one GPU answer 400 requests, four at a time;
2. `paddock status` shows each worker's device and GPU memory, and it matches what
   nvidia-smi says each worker's processes hold;
3. a handler that leaks GPU memory: its worker is recycled by max_gpu_memory, and
   the service has a ready worker at every status read meanwhile;
4. the daemon SIGKILLed: no process of the instance holds GPU memory, and the
   device's memory is back to its level before paddock started, within 2 s;
5. beside it, the naive pattern (CUDA initialised, then os.fork()) fails in the
   child with PyTorch's own error.
"""
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PADDOCK = os.environ.get("PADDOCK", os.path.join(ROOT, "target", "release", "paddock"))
PORT = int(os.environ.get("GPU_CHECK_PORT", "18790"))
RESULTS = []


def verdict(ok, what):
    RESULTS.append((ok, what))
    print(f"{'PASS' if ok else 'FAIL'}: {what}", flush=True)


def smi(query, kind="gpu"):
    """nvidia-smi's CSV answer to --query-{kind}=query, as rows of strings."""
    out = subprocess.run(
        ["nvidia-smi", f"--query-{kind}={query}", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True).stdout
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def number(text):
    """An integer from nvidia-smi, or None for "[N/A]" (WSL, some containers)."""
    try:
        return int(text)
    except ValueError:
        return None


def device_used_mib():
    return number(smi("memory.used")[0][0])


def app_memory_mib():
    """pid -> MiB for each process nvidia-smi lists with a compute context (None
    where it cannot say how much)."""
    return {int(p): number(m) for p, m in smi("pid,used_memory", "compute-apps")}


def post(path, body, timeout=60):
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ValueError) as e:  # refused, reset, timed out, not JSON
        return 0, f"{type(e).__name__}: {e}"


class Instance:
    def __init__(self, folder):
        self.folder = folder
        self.config = os.path.join(folder, "paddock.toml")
        self.env = dict(os.environ, XDG_STATE_HOME=os.path.join(folder, "state"))
        self.state = os.path.join(folder, "state", "paddock", f"gpucheck-{PORT}")

    def cli(self, *args, check=True):
        p = subprocess.run([PADDOCK, "-c", self.config, *args], env=self.env,
                           capture_output=True, text=True, timeout=300)
        if check and p.returncode != 0:
            raise RuntimeError(f"paddock {' '.join(args)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
        return p

    def status(self):
        return json.loads(self.cli("status", "--json").stdout)

    def workers(self):
        return self.status()["services"][0]["workers"]

    def daemon_pid(self):
        with open(os.path.join(self.state, "lock")) as f:
            return json.load(f)["pid"]


def tree(pid):
    """pid and its descendants (from /proc), for summing nvidia-smi's per-process memory."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def main():
    py = os.environ.get("PYTHON", sys.executable)
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout, end="")
    print("paddock:", subprocess.run([PADDOCK, "--version"], capture_output=True, text=True).stdout.strip())
    print("torch:", subprocess.run([py, "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
                                   capture_output=True, text=True).stdout.strip())
    baseline = device_used_mib()
    print(f"device 0 memory in use before paddock: {baseline} MiB")
    folder = tempfile.mkdtemp(prefix="gpucheck")
    inst = Instance(folder)
    with open(inst.config, "w") as f:
        f.write(f"""[instance]
name = "gpucheck"
listen = "127.0.0.1:{PORT}"

[services.mlp]
command = [{json.dumps(py)}, {json.dumps(os.path.join(ROOT, "bench/gpu/torch_worker.py"))}]
devices = [0]
workers_per_device = 4
max_gpu_memory = "3GiB"
startup_timeout = "180s"
request_timeout = "60s"
env = {{ PYTHONPATH = {json.dumps(os.path.join(ROOT, "sdk/python"))} }}
""")
    t = time.monotonic()
    inst.cli("start")
    print(f"started 4 PyTorch workers in {time.monotonic() - t:.1f} s")

    print("--- 1. 400 requests, 4 at a time")
    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post("/v1/mlp", {"n": 64}), range(400)))
    took = time.monotonic() - t
    ok = [a for a in answers if a[0] == 200]
    pids = {a[1]["pid"] for a in ok}
    print(f"{len(ok)}/400 answered 200 in {took:.2f} s ({400 / took:.0f} req/s), by {len(pids)} workers;"
          f" device: {ok[0][1]['device'] if ok else '-'}")
    verdict(len(ok) == 400 and len(pids) == 4, "400 of 400 requests answered, by 4 workers")

    print("--- 2. each worker's device and GPU memory")
    # The daemon reads NVML once a second: give status and nvidia-smi up to 5 s to
    # agree (idle workers hold steady memory).
    deadline = time.monotonic() + 5
    while True:
        st = inst.status()
        apps = app_memory_mib()
        rows, agree = [], True
        for w in st["services"][0]["workers"]:
            ours = w["gpu_memory_bytes"]
            smi_mib = sum(apps.get(p) or 0 for p in tree(w["pid"]))
            rows.append(f"worker {w['index']}: pid {w['pid']}, device {w['device']}, "
                        f"status {None if ours is None else ours >> 20} MiB, nvidia-smi {smi_mib} MiB")
            # nvidia-smi shows whole MiB: allow one for rounding.
            agree &= (w["device"] == 0 and ours is not None and ours > 0
                      and abs((ours >> 20) - smi_mib) <= 1)
        if agree or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # polling a live device, not a test
    print(inst.cli("status").stdout, end="")
    print("gpus:", json.dumps(st["instance"]["gpus"]))
    print("nvidia-smi compute apps (pid: MiB):", apps)
    print("\n".join(rows))
    verdict(agree, "status shows device 0 and each worker's GPU memory, equal to nvidia-smi's")
    doctor = json.loads(inst.cli("doctor", "--json", check=False).stdout)
    for f in doctor["findings"]:
        if "GPU" in f["finding"] or "NVML" in f["finding"]:
            print(f"doctor: {f['severity']}: {f['finding']}")

    print("--- 3. a leaking handler, recycled by max_gpu_memory (3 GiB)")
    before = {w["index"]: (w["pid"], w["generation"]) for w in inst.workers()}
    limit = 3 << 30
    recycled, min_ready, reads, leaks, over = None, 4, 0, 0, False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and recycled is None:
        # Leak until one worker is past the limit, then wait for its recycle.
        if not over and leaks < 60:
            code, body = post("/v1/mlp/leak", {"mb": 512})
            leaks += 1
            print(f"leak {leaks}: {code} {body}")
        ws = inst.workers()
        over = over or any((w["gpu_memory_bytes"] or 0) > limit for w in ws)
        reads += 1
        min_ready = min(min_ready, sum(w["state"] in ("ready", "busy") for w in ws))
        for w in ws:
            if w["index"] in before and w["generation"] > before[w["index"]][1] and w["state"] == "ready":
                recycled = w
    if recycled:
        print(f"worker {recycled['index']} recycled: pid {before[recycled['index']][0]} -> {recycled['pid']}, "
              f"now {recycled['gpu_memory_bytes'] >> 20} MiB")
    # The daemon's log says why: a crash also raises a generation.
    why = []
    try:
        with open(os.path.join(inst.state, "daemon.log")) as f:
            why = [line.rstrip() for line in f if "recycling worker" in line]
    except OSError as e:
        print(f"(daemon.log: {e})")
    print("\n".join(why))
    print(f"fewest ready workers over {reads} status reads: {min_ready}")
    verdict(recycled is not None and min_ready >= 1 and any("over max_gpu_memory" in w for w in why),
            "a worker past max_gpu_memory was recycled for it, with a ready worker throughout")

    print("--- 4. the daemon SIGKILLed")
    ours = set()
    for w in inst.workers():
        ours.update(tree(w["pid"]))
    held = {p: m for p, m in app_memory_mib().items() if p in ours}
    print(f"before: the instance's processes hold {held} MiB; device 0 uses {device_used_mib()} MiB")
    t = time.monotonic()
    os.kill(inst.daemon_pid(), signal.SIGKILL)
    freed_at = back_at = None
    while time.monotonic() - t < 15 and (freed_at is None or back_at is None):
        # Each time is taken after its query answered: an upper bound.
        if freed_at is None and not (set(app_memory_mib()) & ours):
            freed_at = time.monotonic() - t
        used = device_used_mib()
        if back_at is None and used is not None and baseline is not None and used <= baseline + 64:
            back_at = time.monotonic() - t
        time.sleep(0.05)  # polling a live device, not a test
    fmt = lambda x: "never (15 s)" if x is None else f"{x:.3f} s"
    print(f"no process of the instance in nvidia-smi after {fmt(freed_at)}; device memory back to "
          f"baseline (+64 MiB) after {fmt(back_at)}: now {device_used_mib()} MiB")
    verdict(freed_at is not None and freed_at <= 2 and back_at is not None and back_at <= 2,
            "GPU memory back within 2 s of the daemon's SIGKILL")

    print("--- 5. the naive pattern: CUDA initialised, then os.fork()")
    p = subprocess.run([py, os.path.join(ROOT, "bench/gpu/naive_fork.py")], capture_output=True, text=True)
    print(p.stdout + p.stderr, end="")
    verdict("Cannot re-initialize CUDA in forked subprocess" in p.stdout,
            "the naive fork fails in the child with PyTorch's own error")

    print("--- summary")
    for ok, what in RESULTS:
        print(f"{'PASS' if ok else 'FAIL'}: {what}")
    return 0 if all(ok for ok, _ in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
