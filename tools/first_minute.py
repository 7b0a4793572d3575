#!/usr/bin/env python3
"""A new user's first minute, tested as a new user would live it.

    python3 tools/first_minute.py [--wheel FILE] [--json]

Builds the wheel from the repository's pyproject.toml (`maturin build --release`,
the `release` profile, stripped; or takes `--wheel FILE`), makes a fresh virtual
environment, installs the wheel into it from the file (no index), and runs what the
README tells a user to run, with that environment's `bin/` alone on PATH (no Rust
toolchain, whatever the system holds) and no PYTHONPATH:

    paddock init demo && cd demo && paddock start
    (a request)
    paddock status
    paddock stop

Every step must succeed, and the worker must have imported the wheel's SDK (from
the fresh environment's site-packages, not the repository). The wheel's metadata,
`paddock --version`, `paddock.__version__` and the Cargo workspace must name one
version. It prints the time from the start of `pip install` to the first answer
(recorded in docs/benchmarks.md, never asserted). Exit 0 when all of it held, 1
with the step that failed otherwise. Nothing is left running: the instance is
stopped (and its process killed, should `stop` fail) before it exits.
"""

import argparse
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_TIMEOUT = 120  # seconds: any one step; only reached when something is broken


def fail(step, detail):
    print(f"first minute: FAILED at {step}: {detail}", file=sys.stderr)
    sys.exit(1)


def run(step, argv, env, cwd=None, timeout=STEP_TIMEOUT):
    try:
        p = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                           timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        fail(step, e)
    if p.returncode != 0:
        fail(step, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p.stdout


def workspace_version():
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as f:
        text = f.read()
    section = re.search(r"^\[workspace\.package\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    return re.search(r'^version\s*=\s*"([^"]+)"', section.group(1), re.M).group(1)


def build_wheel(out):
    maturin = shutil.which("maturin") or os.path.join(os.path.dirname(sys.executable), "maturin")
    if not os.path.exists(maturin):
        fail("build", "maturin is not installed: pip install -r tools/requirements-wheel.txt")
    run("build (maturin build --release)", [maturin, "build", "--release", "--out", out],
        env=dict(os.environ), cwd=ROOT, timeout=1800)
    wheels = glob.glob(os.path.join(out, "*.whl"))
    if len(wheels) != 1:
        fail("build", f"expected one wheel in {out}, found {wheels}")
    return wheels[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", help="test this wheel instead of building one")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args()

    # Under /tmp on every system: the control socket's path must stay short (macOS's
    # own temporary folder is too deep for a Unix socket's 104 bytes).
    tmp = tempfile.mkdtemp(prefix="pd-fm-", dir="/tmp")
    pid = None
    env = None
    try:
        wheel = os.path.abspath(args.wheel) if args.wheel else build_wheel(os.path.join(tmp, "dist"))
        wheel_version = os.path.basename(wheel).split("-")[1]

        # A fresh environment: the system's basic PATH, no Rust, no PYTHONPATH.
        venv = os.path.join(tmp, "venv")
        base_python = os.path.realpath(sys.executable)
        if sys.prefix != sys.base_prefix:  # running inside a venv: make the new one from its base
            base_python = os.path.join(sys.base_prefix, "bin", os.path.basename(base_python))
        run("python3 -m venv", [base_python, "-m", "venv", venv], env={"PATH": "/usr/bin:/bin"})
        home = os.path.join(tmp, "home")
        os.makedirs(home)
        # PATH holds the new environment alone: the system's folders may hold a Rust
        # toolchain (Debian's cargo lives in /usr/bin), and nothing here needs them.
        env = {
            "PATH": f"{venv}/bin",
            "HOME": home,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "XDG_STATE_HOME": os.path.join(tmp, "state"),
            "XDG_RUNTIME_DIR": os.path.join(tmp, "run"),
        }
        for tool in ("cargo", "rustc"):
            found = shutil.which(tool, path=env["PATH"])
            if found:
                fail("the fresh environment", f"{tool} is on its PATH ({found}): it must not be")

        t0 = time.monotonic()
        run("pip install", [f"{venv}/bin/pip", "install", "--no-index", "--quiet", wheel], env=env)
        installed = time.monotonic()
        paddock = shutil.which("paddock", path=env["PATH"])
        if paddock != os.path.join(venv, "bin", "paddock"):
            fail("pip install", f"`paddock` on PATH is {paddock}, not the wheel's")

        port = free_port()
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        init = run("paddock init demo", ["paddock", "--port", str(port), "init", "demo"],
                   env=env, cwd=work)
        demo = os.path.join(work, "demo")
        run("paddock start", ["paddock", "start"], env=env, cwd=demo)
        with open(os.path.join(env["XDG_STATE_HOME"], "paddock", f"demo-{port}", "lock")) as f:
            pid = json.load(f)["pid"]
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/demo", data=b'{"text": "what a wonderful day"}',
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                answer = json.loads(r.read())
        except Exception as e:  # noqa: BLE001 (any failure of the request is the step's)
            fail("the first request", e)
        first_answer = time.monotonic()
        if answer.get("label") != "positive":
            fail("the first request", f"unexpected answer {answer}")

        status = json.loads(run("paddock status --json", ["paddock", "status", "--json"],
                                env=env, cwd=demo))
        human = run("paddock status", ["paddock", "status"], env=env, cwd=demo)
        site = run("the venv's site-packages",
                   [f"{venv}/bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   env=env).strip()
        workers = status["services"][0]["workers"]
        for w in workers:
            sdk = w.get("sdk") or {}
            if os.path.realpath(sdk.get("path", "")) != os.path.realpath(os.path.join(site, "paddock")):
                fail("paddock status", f"worker {w['index']} imported the SDK from {sdk.get('path')}, not the wheel's ({site})")

        # One version: the wheel, its metadata, the binary, the module, the workspace.
        versions = {
            "wheel file": wheel_version,
            "wheel metadata": run("metadata", [f"{venv}/bin/python", "-c",
                                               "import importlib.metadata as m; print(m.version('paddock-serve'))"],
                                  env=env).strip(),
            "paddock --version": run("paddock --version", ["paddock", "--version"], env=env).split()[-1],
            "paddock.__version__": run("import paddock", [f"{venv}/bin/python", "-c",
                                                          "import paddock; print(paddock.__version__)"],
                                       env=env, cwd=tmp).strip(),
            "Cargo workspace": workspace_version(),
            "workers' SDK": workers[0]["sdk"]["version"],
        }
        if len(set(versions.values())) != 1:
            fail("versions", f"they differ: {versions}")

        run("paddock stop", ["paddock", "stop"], env=env, cwd=demo)
        pid = None
        with zipfile.ZipFile(wheel) as z:
            binary = next(i for i in z.infolist() if i.filename.endswith("/scripts/paddock"))
        report = {
            "ok": True,
            "wheel": os.path.basename(wheel),
            "wheel_bytes": os.path.getsize(wheel),
            "binary_bytes": binary.file_size,
            "version": wheel_version,
            "pip_install_s": round(installed - t0, 3),
            "install_to_first_answer_s": round(first_answer - t0, 3),
            "sdk_path": workers[0]["sdk"]["path"],
        }
        if args.json:
            print(json.dumps(report))
        else:
            print(init.rstrip())
            print(human.rstrip())
            print(f"first minute: ok — {report['wheel']} ({report['wheel_bytes'] / 1e6:.1f} MB, "
                  f"binary {report['binary_bytes'] / 1e6:.1f} MB); pip install took "
                  f"{report['pip_install_s']:.2f} s, the first answer came "
                  f"{report['install_to_first_answer_s']:.2f} s after pip install began; "
                  f"one version ({wheel_version}) everywhere; the worker's SDK: {report['sdk_path']}")
    finally:
        if pid is not None and env is not None:
            subprocess.run(["paddock", "stop"], env=env, cwd=os.path.join(tmp, "work", "demo"),
                           capture_output=True, timeout=STEP_TIMEOUT)
            try:
                os.kill(pid, 9)  # the daemon this script started, if stop could not end it
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
