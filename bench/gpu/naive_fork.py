"""The naive pattern beside paddock: CUDA initialised, then os.fork(), and the child
uses CUDA. PyTorch refuses in the child; this prints what it says."""
import os
import sys

import torch

torch.zeros(1, device="cuda")  # CUDA initialised in the parent
pid = os.fork()
if pid == 0:
    try:
        torch.zeros(1, device="cuda")
        print("child: CUDA worked after fork (unexpected)", flush=True)
        os._exit(0)
    except Exception as e:  # the error this check records
        print(f"child: {type(e).__name__}: {e}", flush=True)
        os._exit(1)
_, status = os.waitpid(pid, 0)
sys.exit(0 if os.waitstatus_to_exitcode(status) == 1 else 1)
