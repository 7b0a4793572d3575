"""A paddock worker: `setup()` loads the model once per worker process, then each
call of a handler answers one request. Replace the toy model with yours.

    {call}

Next: `@paddock.handler` on another method serves it at /v1/{name}/<method>;
`paddock init --template batch` shows requests batched into one model call.
"""
import paddock


class Model:
    def setup(self):
        # Load the weights here (torch.load, from_pretrained, ...): it runs once in
        # each worker before any request reaches it, and `paddock start` waits for it.
        self.lexicon = {"good": 1.0, "great": 1.0, "wonderful": 1.0,
                        "bad": -1.0, "awful": -1.0, "boring": -1.0}

    @paddock.handler  # `predict` is the service's default handler: POST /v1/{name}
    def predict(self, req):
        data = req.json()  # a body that is not JSON is answered 400
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise paddock.BadRequest('send {"text": "..."}')  # a 400, meant for the client
        words = text.lower().split()
        score = sum(self.lexicon.get(w, 0.0) for w in words)
        return {"label": "positive" if score >= 0 else "negative", "score": score,
                "words": len(words)}


if __name__ == "__main__":
    paddock.serve(Model())
