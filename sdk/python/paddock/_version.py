"""This SDK's version, read from its one source.

The version of paddock has one source, the Cargo workspace (`Cargo.toml`,
`[workspace.package]`): the wheel's metadata gets it from there at build time, and so
does this module at run time:

* installed from the wheel (`pip install paddock-serve`), the package sits beside its
  `paddock_serve-<version>.dist-info` folder, whose name carries the version;
* run from a checkout of the repository (`sdk/python` on PYTHONPATH, or an editable
  install), the workspace's `Cargo.toml` is three folders up.

It reads one folder listing or one small file, never `importlib.metadata` (about 12 ms
to import, paid by every worker at start), and it never raises: an SDK that cannot
tell says "unknown".
"""

import os
import re

DISTRIBUTION = "paddock-serve"  # the name on PyPI; the module and the command are `paddock`

_HERE = os.path.dirname(os.path.abspath(__file__))


def _from_dist_info(site):
    prefix = DISTRIBUTION.replace("-", "_") + "-"
    try:
        names = os.listdir(site)
    except OSError:
        return None
    for name in names:
        if name.startswith(prefix) and name.endswith(".dist-info"):
            return name[len(prefix):-len(".dist-info")]
    return None


def _from_workspace(root):
    try:
        with open(os.path.join(root, "Cargo.toml"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    section = re.search(r"^\[workspace\.package\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if section is None:
        return None
    found = re.search(r'^version\s*=\s*"([^"]+)"', section.group(1), re.M)
    return found.group(1) if found else None


def _find():
    site = os.path.dirname(_HERE)
    return (_from_dist_info(site)
            or _from_workspace(os.path.dirname(os.path.dirname(site)))
            or "unknown")


__version__ = _find()
SDK_PATH = _HERE
