#!/usr/bin/env python3
"""Lists import cycles between the modules of crates/paddock/src.

An edge A -> B means a file of module A names a path in module B (`use`, `crate::`,
`super::`). Edges between a module and its own ancestors or descendants are left out
(a parent declares its children; a child may use its parent's private items). Exit 1
when there is a cycle, so it can run in CI.

    python3 tools/module_cycles.py
"""
import re
import sys

from rust_modules import read, resolve


def main():
    files = {m: text for m, (_, _, text) in read().items()}
    modules = set(files)
    edges = {m: set() for m in modules}
    for m, text in files.items():
        text = re.sub(r"//.*", "", text)
        for mm in re.finditer(r"\b((?:crate|super)(?:::\w+)+)", text):
            target, _ = resolve(modules, m, mm.group(1))
            if target is None or target == m:
                continue
            if target[: len(m)] == m or m[: len(target)] == target:
                continue  # ancestor or descendant
            edges[m].add(target)
        # `use super::{a, b::c}` groups
        for mm in re.finditer(r"use super::\{([^}]*)\}", text):
            for item in mm.group(1).split(","):
                name = item.strip().split("::")[0]
                if not name or name == "self":
                    continue
                target, _ = resolve(modules, m, "super::" + name)
                if target and target != m and not (target[: len(m)] == m or m[: len(target)] == target):
                    edges[m].add(target)

    found = cycles(modules, edges)
    # The same at the granularity of top-level parts (`daemon::worker` for all its
    # files): a child of one part that uses a child of another counts for both.
    top = lambda t: t[:2]
    coarse = {top(m): set() for m in modules}
    for a, bs in edges.items():
        for b in bs:
            ta, tb = top(a), top(b)
            if ta != tb and not (ta[: len(tb)] == tb or tb[: len(ta)] == ta):
                coarse[ta].add(tb)
    found += [c for c in cycles(set(coarse), coarse) if c not in found]
    name = lambda t: "::".join(t) or "crate"
    for comp, es in found:
        print("cycle:", ", ".join(sorted(name(c) for c in comp)))
        for a, b in es:
            print(f"  {name(a)} -> {name(b)}")
    if not found:
        print(f"no import cycles among {len(modules)} modules")
    return 1 if found else 0


def cycles(modules, edges):
    """The strongly connected components of more than one module, with their edges."""
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            strong(v)
    out = []
    for comp in sccs:
        members = set(comp)
        out.append((sorted(comp), [(a, b) for a in sorted(comp) for b in sorted(edges[a] & members)]))
    return out


if __name__ == "__main__":
    sys.exit(main())
