"""The bundled example model: a bag-of-words logistic sentiment classifier.

Run it under paddock (two workers of this file, see paddock.toml):

    cargo run -- -c examples/sentiment/paddock.toml run

It answers `predict` with JSON {"text": "..."} or a plain-text body, and `labels`.

The weights are in model.json: p(positive) = sigmoid(bias + sum of word weights).
"""
import json
import math
import os
import re

import paddock

TOKEN = re.compile(r"[^a-z]+")


def tokenize(text):
    return [t for t in TOKEN.split(text.lower()) if t]


class Sentiment:
    def setup(self):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.json")
        with open(path, encoding="utf-8") as f:
            model = json.load(f)
        self.label_names = model["labels"]
        self.bias = float(model["bias"])
        self.weights = {w: float(x) for w, x in model["weights"].items()}
        print(f"loaded {len(self.weights)} weights", flush=True)

    @paddock.handler
    def predict(self, req):
        """JSON {"text": "..."} or a plain-text body -> {"label", "score", "tokens"}."""
        if req.content_type.split(";")[0].strip().lower() == "application/json":
            data = req.json()
            text = data.get("text") if isinstance(data, dict) else data
            if not isinstance(text, str):
                raise ValueError('expected a JSON body {"text": "..."}')
        else:
            text = req.text()
        tokens = tokenize(text)
        z = self.bias + sum(self.weights.get(t, 0.0) for t in tokens)
        p_positive = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
        positive = p_positive >= 0.5
        return {"label": self.label_names[1] if positive else self.label_names[0],
                "score": round(p_positive if positive else 1.0 - p_positive, 4),
                "tokens": len(tokens)}

    @paddock.handler(idempotent=True)
    def labels(self, req):
        return self.label_names


if __name__ == "__main__":
    paddock.serve(Sentiment())
