"""An OpenAI-compatible embeddings service: all-MiniLM-L6-v2 in numpy (minilm.py),
batched, as `POST /v1/embeddings`.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8700/v1", api_key="unused")
    client.embeddings.create(model="all-MiniLM-L6-v2", input=["a", "b"])

The request is OpenAI's: `input` a string or a list of strings, `encoding_format`
`float` or `base64` (little-endian float32, what the openai client asks for by
default). Token-id arrays are refused with 400: this service tokenises itself
(LangChain's OpenAIEmbeddings needs `check_embedding_ctx_length=False`).

Requests that wait together reach the model in one call (@paddock.batch): their
inputs are encoded as one batch and the results handed back to each.
"""
import base64

import numpy as np

import paddock
from minilm import MiniLM

MODEL = "all-MiniLM-L6-v2"


def _inputs(req):
    """The request's texts, or a paddock.Error saying what is wrong with it."""
    try:
        body = req.json()
    except paddock.BadRequest as e:
        return paddock.Error(str(e), status=400)
    if not isinstance(body, dict) or "input" not in body:
        return paddock.Error('expected a JSON object with "input"', status=400)
    texts = body["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        return paddock.Error('"input" must be a string or a non-empty list of strings', status=400)
    if not all(isinstance(t, str) for t in texts):
        return paddock.Error('"input" as token ids is not supported: send strings (with '
                             "LangChain's OpenAIEmbeddings, set check_embedding_ctx_length=False)",
                             status=400)
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        return paddock.Error('"encoding_format" must be "float" or "base64"', status=400)
    return texts, fmt


class Embeddings:
    def setup(self):
        self.model = MiniLM()

    @paddock.batch(max_size=32)
    def predict(self, reqs):
        parsed = [_inputs(r) for r in reqs]
        texts = [t for p in parsed if not isinstance(p, paddock.Error) for t in p[0]]
        vectors, counts = self.model.encode(texts) if texts else (None, [])
        out, at = [], 0
        for p in parsed:
            if isinstance(p, paddock.Error):
                out.append(p)
                continue
            items, fmt = p
            n = len(items)
            data = []
            for i in range(n):
                v = vectors[at + i]
                emb = (base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
                       if fmt == "base64" else [float(x) for x in v])
                data.append({"object": "embedding", "index": i, "embedding": emb})
            tokens = sum(counts[at:at + n])
            at += n
            out.append({"object": "list", "data": data, "model": MODEL,
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
        return out


if __name__ == "__main__":
    paddock.serve(Embeddings())
