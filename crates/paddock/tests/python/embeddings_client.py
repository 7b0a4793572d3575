"""Checks examples/embeddings through the official openai client (run by the
integration test with .venv-test's python): the quickstart similarity matrix that
sentence-transformers publishes for all-MiniLM-L6-v2, to 3 decimals, with both
encoding formats, usage counts, and token-id input refused with 400.

    python embeddings_client.py PORT     (prints one JSON line; exits 1 on a mismatch)
"""
import json
import sys

import numpy as np
import openai
from openai import OpenAI

# sentence-transformers' quickstart (its README and docs): model.similarity(...)
SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
EXPECTED = np.array([[1.0000, 0.6660, 0.1046],
                     [0.6660, 1.0000, 0.1411],
                     [0.1046, 0.1411, 1.0000]])

client = OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="unused", max_retries=0)
report = {}
for fmt in ("base64", "float"):  # the client asks for base64 by default and decodes it
    kw = {} if fmt == "base64" else {"encoding_format": "float"}
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=SENTENCES, **kw)
    e = np.array([d.embedding for d in sorted(r.data, key=lambda d: d.index)])
    sim = e @ e.T
    report[fmt] = {"dims": e.shape[1], "similarity": np.round(sim, 4).tolist(),
                   "max_error": float(np.abs(sim - EXPECTED).max()),
                   "prompt_tokens": r.usage.prompt_tokens}
    if e.shape != (3, 384) or not np.allclose(sim, EXPECTED, atol=5e-4):
        print(json.dumps(report))
        sys.exit(1)
one = client.embeddings.create(model="all-MiniLM-L6-v2", input="a single string")
report["single"] = len(one.data)
try:
    client.embeddings.create(model="all-MiniLM-L6-v2", input=[[101, 2023, 102]])
    report["token_ids"] = "accepted"
except openai.BadRequestError as e:
    report["token_ids"] = e.status_code
print(json.dumps(report))
