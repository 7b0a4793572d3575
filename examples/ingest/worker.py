"""ChromaDB ingestion as durable paddock jobs (seed 003's situation: LangChain's
pattern, the client opened at module level, which hangs under Celery's prefork).

    curl -s localhost:8700/v1/jobs/ingest -H 'Content-Type: application/json' \\
         -d '{"id": "doc-1", "text": "ChromaDB stores vectors."}'
    curl -s localhost:8700/v1/ingest/query -d '{"text": "where are vectors kept?"}'

Documents are embedded here with all-MiniLM-L6-v2 in numpy (../embeddings/minilm.py)
and upserted by their id: jobs are at-least-once (a job interrupted by a crash runs
again), so writing the same document twice must leave one copy. The service runs
`workers = 1`: ChromaDB allows one writer per path; two processes writing one path
corrupt or crash it even without paddock.

The client is opened at module level, as LangChain examples do: paddock starts each
worker by fork+exec of a fresh interpreter, so the client's threads are never
inherited by a fork.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "embeddings"))

import chromadb  # noqa: E402

import paddock  # noqa: E402
from minilm import MiniLM  # noqa: E402

CLIENT = chromadb.PersistentClient(path=os.environ.get("INGEST_DB", "chroma-data"))
DOCS = CLIENT.get_or_create_collection("docs", embedding_function=None,
                                       metadata={"hnsw:space": "cosine"})


class Ingest:
    def setup(self):
        self.model = MiniLM()

    @paddock.batch(max_size=32)
    def predict(self, reqs):
        """A batch of documents {"id": "...", "text": "..."}: embedded together,
        upserted by id; each gets {"id": ...} back (or a 400 of its own)."""
        docs, out = [], []
        for r in reqs:
            try:
                d = r.json()
            except paddock.BadRequest as e:
                out.append(paddock.Error(str(e), status=400))
                continue
            if not (isinstance(d, dict) and isinstance(d.get("id"), str)
                    and isinstance(d.get("text"), str) and d["text"].strip()):
                out.append(paddock.Error('expected {"id": "...", "text": "..."}', status=400))
                continue
            docs.append(d)
            out.append({"id": d["id"]})
        if docs:
            vectors, _ = self.model.encode([d["text"] for d in docs])
            DOCS.upsert(ids=[d["id"] for d in docs], embeddings=vectors.tolist(),
                        documents=[d["text"] for d in docs])
        return out

    @paddock.handler(idempotent=True)
    def query(self, req):
        d = req.json()
        if not isinstance(d, dict) or not isinstance(d.get("text"), str):
            raise paddock.BadRequest('expected {"text": "...", "k": 3}')
        vec, _ = self.model.encode([d["text"]])
        r = DOCS.query(query_embeddings=vec.tolist(), n_results=int(d.get("k", 3)))
        return {"ids": r["ids"][0], "distances": [round(x, 4) for x in r["distances"][0]]}

    @paddock.handler(idempotent=True)
    def count(self, req):
        return {"count": DOCS.count()}


if __name__ == "__main__":
    paddock.serve(Ingest())
