"""The embeddings benchmark's peer: the same numpy all-MiniLM-L6-v2
(examples/embeddings/minilm.py) behind FastAPI, one request per model call.

    uvicorn embed_fastapi:app --workers 2     (from bench/, with .venv-test's python)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples",
                                "embeddings"))

from fastapi import FastAPI  # noqa: E402
from minilm import MiniLM  # noqa: E402

app = FastAPI()
model = MiniLM()


@app.post("/v1/embeddings")
def embeddings(body: dict):
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    vectors, counts = model.encode(texts)
    return {"object": "list", "model": "all-MiniLM-L6-v2",
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}}
