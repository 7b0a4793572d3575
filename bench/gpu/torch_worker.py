"""The device check's model: an MLP with random weights on the worker's GPU (no
download), and a handler that leaks GPU memory on purpose."""
import os

import paddock
import torch


class Model:
    def setup(self):
        # CUDA is initialised here, in the worker, after paddock spawned it: the
        # worker sees exactly its CUDA_VISIBLE_DEVICES device, as cuda:0.
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 16)
        ).cuda().eval()
        self.leaked = []

    @paddock.handler
    def predict(self, req):
        n = int(req.json().get("n", 8))
        with torch.no_grad():
            out = self.net(torch.randn(n, 1024, device="cuda"))
        return {"sum": float(out.sum()), "device": torch.cuda.get_device_name(0), "pid": os.getpid()}

    @paddock.handler
    def leak(self, req):
        """Keeps `mb` MiB more on the GPU, for max_gpu_memory to catch."""
        mb = int(req.json().get("mb", 256))
        self.leaked.append(torch.empty(mb * 1024 * 1024, dtype=torch.uint8, device="cuda"))
        return {"held_mb": sum(t.numel() for t in self.leaked) >> 20}


if __name__ == "__main__":
    paddock.serve(Model())
