#!/usr/bin/env python3
"""Holds crates/paddock/src to the layers docs/architecture.md writes down, and its
folder map to the tree.

Three rules, each a failure (exit 1) when broken, so it runs in CI:

1. Parts import only lower layers. The crate's parts and the daemon's parts each
   have a layer (the tables below, copied from docs/architecture.md, "Layers"); a
   part may use a part of a lower layer, never one of its own layer or above.
2. Nothing reaches up past its own folder: a file may use the items of its folder's
   `mod.rs` (its direct parent), never those of a folder further up
   (`crate::daemon::jitter()` from `daemon/worker/process.rs` breaks this).
3. No glob imports of a parent (`use super::*`) outside tests: a reader finds where a
   name comes from in the file's own imports.

Test code (`tests.rs`, and a file's trailing `#[cfg(test)] mod tests`) is exempt
from 2 and 3.

    python3 tools/layers.py
"""
import os
import re
import sys

from rust_modules import read, resolve

# The crate's top-level parts, lowest first. `lib` and `main` sit above all.
CRATE_LAYERS = {
    # plain data and helpers: they know nothing of the daemon or the CLI
    "exit": 0, "timefmt": 0, "jitter": 0, "gpu": 0, "exec_listen": 1, "config": 1,
    "status": 1, "openapi": 2, "instance": 2, "control": 2, "sdk": 2, "schedules": 2,
    "daemon": 3,
    "cli": 4,
}
# The daemon's parts, lowest first (`daemon/mod.rs`, the start-up sequence, above all).
DAEMON_LAYERS = {
    "messages": 0, "metrics": 0, "lifecycle": 0, "logsink": 0, "ports": 0,
    "spawner": 0, "env": 0, "notify": 0, "gpu_sampler": 0, "process_groups": 0,
    "start_report": 0,
    "dispatch": 1, "probe": 1, "failure": 1,
    "worker": 2, "scaling": 2,
    "coordinator": 3, "jobs": 3,
    "supervisor": 4,
    "handles": 5,
    "http": 6, "control_server": 6,
    "file_watch": 7,
}


def without_tests(text):
    """The file's text without its test modules (`#[cfg(test)] mod NAME { … }`,
    inline or declared) and comments."""
    text = re.sub(r"//.*", "", text)
    out, i = [], 0
    pat = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*([{;])")
    while True:
        mm = pat.search(text, i)
        if not mm:
            out.append(text[i:])
            break
        out.append(text[i : mm.start()])
        if mm.group(1) == ";":
            i = mm.end()
            continue
        depth, j = 1, mm.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    return "".join(out)


def part_layer(module):
    """(table name, part, layer) of a module, or None for the crate's root."""
    if not module:
        return None
    if module[0] == "daemon" and len(module) >= 2 and module[1] in DAEMON_LAYERS:
        return ("daemon", module[1], DAEMON_LAYERS[module[1]])
    if module[0] in CRATE_LAYERS:
        return ("crate", module[0], CRATE_LAYERS[module[0]])
    return None


def main():
    files = read()
    modules = set(files)
    problems = []
    for m in files:
        if m and m[0] not in ("lib", "main") and m[0] not in CRATE_LAYERS:
            problems.append(f"{files[m][0]}: part {m[0]!r} has no layer in tools/layers.py")
        if len(m) >= 2 and m[0] == "daemon" and m[1] not in DAEMON_LAYERS:
            problems.append(f"{files[m][0]}: daemon part {m[1]!r} has no layer in tools/layers.py")

    for m, (path, folder, text) in files.items():
        rel = os.path.relpath(path, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        is_test = os.path.basename(path) == "tests.rs"
        code = without_tests(text)
        if not is_test and re.search(r"\buse super::\*;", code):
            problems.append(f"{rel}: `use super::*` (name what is imported)")
        # The folder whose mod.rs a file may use: its own folder (for mod.rs, its
        # parent folder's module is one level up, which it may not reach).
        home = m if folder else m[:-1]
        for mm in re.finditer(r"\b((?:crate|super)(?:::\w+)+)", code):
            target, rest = resolve(modules, m, mm.group(1))
            if target is None or target == m:
                continue
            # Rule 2: an item of a module above this file's folder.
            if not is_test and rest and target == m[: len(target)] and len(target) < len(home):
                problems.append(
                    f"{rel}: uses {mm.group(1)} of {'::'.join(target) or 'crate'}, above its own folder"
                )
                continue
            # Rule 1: layers. Between the crate's parts, then between the daemon's.
            ca, cb = CRATE_LAYERS.get(m[0]) if m else None, CRATE_LAYERS.get(target[0])
            if m and target and m[0] != target[0] and ca is not None and cb is not None and cb >= ca:
                problems.append(
                    f"{rel}: {m[0]} (layer {ca}) uses {'::'.join(target)} (layer {cb}): "
                    "only lower layers may be used"
                )
            a, b = part_layer(m), part_layer(target)
            if a and b and a[0] == b[0] == "daemon" and a[1] != b[1] and b[2] >= a[2]:
                problems.append(
                    f"{rel}: daemon part {a[1]} (layer {a[2]}) uses {b[1]} (layer {b[2]}): "
                    "only lower layers may be used"
                )
    problems += folder_map()
    for p in sorted(set(problems)):
        print(p)
    if problems:
        return 1
    print(f"layers hold among {len(modules)} modules")
    return 0


def folder_map():
    """Differences between the folders docs/architecture.md maps ("## Folders") and
    the folders that hold tracked files."""
    import subprocess

    top = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = subprocess.run(["git", "ls-files"], cwd=top, capture_output=True, text=True)
    if out.returncode != 0:
        return [f"git ls-files failed: {out.stderr.strip()}"]
    tracked = {os.path.dirname(f) for f in out.stdout.splitlines()} - {""}
    doc = open(os.path.join(top, "docs", "architecture.md")).read()
    section = doc.split("## Folders", 1)[1].split("\n## ", 1)[0] if "## Folders" in doc else ""
    mapped = set(re.findall(r"^- `([^`]+)/`", section, re.M))
    problems = [f"docs/architecture.md: folder {f}/ is not in the map" for f in sorted(tracked - mapped)]
    problems += [f"docs/architecture.md: the map names {f}/, which holds no tracked file" for f in sorted(mapped - tracked)]
    return problems


if __name__ == "__main__":
    sys.exit(main())
