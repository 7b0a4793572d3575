"""Vector search with FAISS (OpenMP inside, seed 001's situation) as a paddock worker.

setup() builds an index of 20,000 seeded random vectors (64 dimensions) once per
worker process. `search` takes {"vector": [...64 floats], "k": 5} or {"id": N, "k": 5}
and answers the k nearest ids with their distances; `info` shows the thread settings
the worker runs with, the same whether the daemon was started with `paddock start`,
`paddock run`, systemd or in a container: they come from the config's `env` (and
paddock's per-worker defaults), never from the shell that started it.

FAISS's OpenMP thread pool is why this runs as a paddock worker: paddock starts each
worker by fork+exec of a fresh interpreter, never by forking a process whose OpenMP
pool already exists (the hang of seed 001).
"""
import os

import faiss
import numpy as np

import paddock

DIM, COUNT = 64, 20_000


class Search:
    def setup(self):
        rng = np.random.default_rng(7)
        self.vectors = rng.standard_normal((COUNT, DIM)).astype("float32")
        self.index = faiss.IndexFlatL2(DIM)
        self.index.add(self.vectors)

    @paddock.handler(idempotent=True)
    def search(self, req):
        body = req.json()
        if not isinstance(body, dict):
            raise paddock.BadRequest('expected {"vector": [...]} or {"id": N}')
        k = int(body.get("k", 5))
        if not 1 <= k <= 100:
            raise paddock.BadRequest('"k" must be between 1 and 100')
        if "id" in body:
            i = int(body["id"])
            if not 0 <= i < COUNT:
                raise paddock.BadRequest(f'"id" must be between 0 and {COUNT - 1}')
            query = self.vectors[i:i + 1]
        else:
            query = np.asarray(body.get("vector"), dtype="float32").reshape(1, -1)
            if query.shape[1] != DIM:
                raise paddock.BadRequest(f'"vector" must have {DIM} numbers')
        distances, ids = self.index.search(query, k)
        return {"ids": ids[0].tolist(), "distances": [round(float(d), 4) for d in distances[0]]}

    @paddock.handler(idempotent=True)
    def info(self, req):
        names = ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"]
        return {"env": {n: os.environ.get(n) for n in names},
                "faiss_omp_threads": faiss.omp_get_max_threads(),
                "faiss": faiss.__version__, "pid": os.getpid()}


if __name__ == "__main__":
    paddock.serve(Search())
