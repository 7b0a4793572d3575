"""Reading crates/paddock/src as a graph of modules, for the structure checks
(module_cycles.py, layers.py): each file's module path, and what a path named in
the code (`crate::…`, `super::…`) resolves to.
"""
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "paddock", "src")


def module_of(path):
    """The module path of a file, and whether it is a folder's module (`mod.rs`,
    `lib.rs`, `main.rs`)."""
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    folder = rel[-1] in ("mod", "lib", "main")
    if folder:
        rel = rel[:-1]
    return tuple(rel), folder


def read():
    """{module: (path, is a folder's module, text)} for every .rs file."""
    files = {}
    for d, _, names in os.walk(ROOT):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(d, n)
                m, folder = module_of(p)
                files[m] = (p, folder, open(p).read())
    return files


def resolve(modules, module, path):
    """What `path` (`crate::a::b::Item`, `super::c`), named in `module`, means:
    (the longest module it names, the rest of the path), or (None, parts)."""
    parts = path.split("::")
    base = list(module)
    while parts and parts[0] == "super":
        base = base[:-1]
        parts = parts[1:]
    if path.startswith("crate"):
        base, parts = [], parts[1:]
    full = base + parts
    for k in range(len(full), 0, -1):
        if tuple(full[:k]) in modules:
            return tuple(full[:k]), full[k:]
    return None, full
