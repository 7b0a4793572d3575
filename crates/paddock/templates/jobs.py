"""A paddock worker for durable jobs: work too long for a request (ingesting a
document, transcribing a recording) goes through the job queue, which survives
worker and daemon crashes and retries a failed attempt. The handler is an ordinary
one: the same code answers `POST /v1/{name}` online.

    {call}
    curl -s localhost:{port}/v1/jobs/<id>          # its state, attempts, history
    curl -s localhost:{port}/v1/jobs/<id>/result   # its result, once done

Next: `paddock jobs list`, `paddock jobs show <id>`; an `Idempotency-Key` header on
the enqueue makes a retried enqueue return the same job.
"""
import hashlib

import paddock


class Model:
    def setup(self):
        # Load the weights (or open the database) here: once in each worker.
        self.chunk_words = 50

    @paddock.handler(idempotent=True)  # safe to run again: paddock may retry a job
    def predict(self, req):
        data = req.json()
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise paddock.BadRequest('send {"text": "..."}')  # the job fails at once
        words = text.split()
        chunks = [" ".join(words[i:i + self.chunk_words])
                  for i in range(0, len(words), self.chunk_words)]
        # Stands in for embedding each chunk and storing it under a stable id.
        ids = [hashlib.sha256(c.encode("utf-8")).hexdigest()[:16] for c in chunks]
        return {"chunks": len(chunks), "ids": ids}


if __name__ == "__main__":
    paddock.serve(Model())
