"""A paddock worker with a batched handler: requests that arrive together (up to
`max_size`, waiting at most `max_wait` for company) reach the model in one call,
the way a GPU model wants them. Replace the toy model with yours.

    {call}

Next: `paddock status` shows the workers; the batch sizes are in /metrics
(`paddock_batch_size`).
"""
import paddock


class Model:
    def setup(self):
        # Load the weights here: once in each worker, before any request.
        self.dimensions = 8

    def embed(self, texts):
        # Stands in for model.encode(texts): one call for the whole batch.
        return [[(hash((t, i)) % 1000) / 1000 for i in range(self.dimensions)]
                for t in texts]

    @paddock.batch(max_size=32, max_wait="5ms")  # POST /v1/{name}: a list of requests
    def predict(self, reqs):
        texts = []
        for r in reqs:
            data = r.json()
            texts.append(str(data.get("text", "")) if isinstance(data, dict) else "")
        # One result per request, in order.
        return [{"vector": v} for v in self.embed(texts)]


if __name__ == "__main__":
    paddock.serve(Model())
