"""The fork guard (version 5): a worker that forks while it has several OS threads, or after CUDA started, is reported to the daemon (FORK_WARNING) and its log."""

import json
import os
import struct
import sys
import threading
import traceback

from ._protocol import FORK_WARNING
from ._process import _log


def _os_threads():
    """The process's OS threads (Python's and native ones): Linux from
    /proc/self/task, macOS from proc_pidinfo(PROC_PIDTASKINFO); Python's own count
    where neither answers."""
    if sys.platform.startswith("linux"):
        try:
            return len(os.listdir("/proc/self/task"))
        except OSError:
            pass
    elif sys.platform == "darwin":
        n = _darwin_threads()
        if n:
            return n
    return threading.active_count()


# struct proc_taskinfo (xnu bsd/sys/proc_info.h): six uint64_t, then int32_t
# pti_policy … pti_csw (nine), then pti_threadnum; 96 bytes in all.
_PROC_PIDTASKINFO = 4


_TASKINFO_SIZE = 96


_THREADNUM_OFFSET = 6 * 8 + 9 * 4


def _darwin_threads(proc_pidinfo=None):
    """pti_threadnum of this process, through libproc (in libSystem); None if the
    call fails."""
    import ctypes
    try:
        if proc_pidinfo is None:
            proc_pidinfo = ctypes.CDLL("/usr/lib/libSystem.B.dylib").proc_pidinfo
            proc_pidinfo.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint64,
                                     ctypes.c_void_p, ctypes.c_int]
            proc_pidinfo.restype = ctypes.c_int
        buf = ctypes.create_string_buffer(_TASKINFO_SIZE)
        if proc_pidinfo(os.getpid(), _PROC_PIDTASKINFO, 0, buf, _TASKINFO_SIZE) != _TASKINFO_SIZE:
            return None
        return struct.unpack_from("=i", buf.raw, _THREADNUM_OFFSET)[0]
    except (OSError, AttributeError):
        return None


def _cuda_initialised():
    """Whether this process initialised CUDA through PyTorch (asked only when torch
    is already imported: the guard never imports it)."""
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:
        return False


def _fork_site():
    """file:line in function of the innermost caller outside the standard library."""
    import sysconfig
    stdlib = sysconfig.get_paths()["stdlib"]
    here = os.path.dirname(os.path.abspath(__file__))
    for fs in reversed(traceback.extract_stack()[:-2]):
        path = os.path.abspath(fs.filename)
        if not path.startswith(stdlib) and not path.startswith(here):
            return f"{fs.filename}:{fs.lineno} in {fs.name}"
    return "an unknown call site"


def _install_fork_guard(conn):
    """Warns (stderr and FORK_WARNING) when this process forks with several OS
    threads: the child gets only the forking thread, and a lock another one held stays
    locked there for ever (docs/protocol.md, version 5)."""
    if not hasattr(os, "register_at_fork"):
        return
    me = os.getpid()

    def before():
        if os.getpid() != me:
            return  # a child of ours forking: not the worker's own fork
        n = _os_threads()
        cuda = _cuda_initialised()
        if n <= 1 and not cuda:
            return
        site = _fork_site()
        if cuda:
            _log(f"paddock: fork guard: worker pid {me} is forking at {site} after it "
                 "initialised CUDA: the child cannot use CUDA (PyTorch: \"Cannot re-initialize "
                 "CUDA in forked subprocess\"). Use multiprocessing's 'spawn' start method "
                 "(docs/operations.md, \"Forks\").")
        if n > 1:
            _log(f"paddock: fork guard: worker pid {me} is forking with {n} OS threads at {site}. "
                 "The child gets only the forking thread; a lock any other thread held "
                 "(OpenMP, BLAS, a logging or gRPC thread) stays locked in it, and the child "
                 "may hang. Use multiprocessing's 'forkserver' or 'spawn' start method, with "
                 "paddock.serve() under `if __name__ == \"__main__\":` "
                 "(docs/operations.md, \"Forks\").")
        try:
            warning = {"threads": n, "site": site, "pid": me}
            if cuda:
                warning["cuda"] = True
            conn.send(FORK_WARNING, json.dumps(warning).encode("utf-8"))
        except OSError:
            pass

    os.register_at_fork(before=before)
