"""The bundled example model: a bag-of-words logistic sentiment classifier.

Run it under paddock (two workers of this file, see paddock.toml):

    cargo run -- -c examples/sentiment/paddock.toml run

It answers `predict` with JSON {"text": "..."} or a plain-text body, `labels`, and
`classify`: the same model as a batched handler (@paddock.batch), which gets every
waiting request at once while the workers are busy; a request without a "text"
fails alone (400), its neighbours in the batch are answered.

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
                raise paddock.BadRequest('expected a JSON body {"text": "..."}')
        else:
            try:
                text = req.text()
            except UnicodeDecodeError:
                raise paddock.BadRequest("the body is not UTF-8 text") from None
        return self.score(text)

    @paddock.batch(max_size=32)
    def classify(self, reqs):
        """A batch of JSON {"text": "..."} requests -> one result each."""
        out = []
        for req in reqs:
            try:
                data = req.json()
            except paddock.BadRequest as e:
                out.append(paddock.Error(str(e), status=400))
                continue
            text = data.get("text") if isinstance(data, dict) else None
            if not isinstance(text, str):
                out.append(paddock.Error('expected a JSON body {"text": "..."}', status=400))
            else:
                out.append(self.score(text))
        return out

    def score(self, text):
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
