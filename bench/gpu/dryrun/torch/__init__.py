"""A stand-in for torch, for dry-running bench/gpu/check.py without a GPU (bench/gpu/dryrun.sh).

It writes the same state as the tests' fake NVML (crates/paddock/tests/fixtures/fake_nvml.c):
the "GPU memory" a process holds is a file FAKE_NVML_DIR/gpuN/PID. The first CUDA use
holds 500 MiB (a context), and CUDA used in a process forked after it raises PyTorch's error.
"""
import contextlib, os
__version__ = "0.0-fake"
class version: cuda = "fake"
uint8 = "uint8"
_held = 0
_init_pid = None
def _hold(n):
    global _held, _init_pid
    if _init_pid is None:
        _init_pid = os.getpid(); n += 500 << 20
    elif _init_pid != os.getpid():
        raise RuntimeError("Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you must use the 'spawn' start method")
    _held += n
    d = os.path.join(os.environ["FAKE_NVML_DIR"], "gpu" + os.environ.get("CUDA_VISIBLE_DEVICES", "0"))
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/{os.getpid()}.tmp", "w") as f: f.write(str(_held))
    os.rename(f"{d}/{os.getpid()}.tmp", f"{d}/{os.getpid()}")
class _T:
    def __init__(self, n=0): self.n = n
    def sum(self): return 0.0
    def numel(self): return self.n
    def cuda(self): _hold(17 << 20); return self
    def eval(self): return self
    def __call__(self, x): return _T()
class cuda:
    is_available = staticmethod(lambda: True)
    is_initialized = staticmethod(lambda: _init_pid is not None)
    get_device_name = staticmethod(lambda i=0: "Fake H200")
class nn:
    Sequential = lambda *a: _T()
    Linear = lambda *a: None
    ReLU = lambda *a: None
def manual_seed(s): pass
no_grad = contextlib.nullcontext
def randn(*a, device=None): _hold(0); return _T()
def empty(n, dtype=None, device=None): _hold(n); return _T(n)
def zeros(n, device=None): _hold(0); return _T(n)
