"""A paddock worker that streams: a handler that is a generator sends each `yield`
to the client as soon as it is made (tokens from a language model, audio from a
speech model). When the client goes away, the generator is closed at its next
`yield` and its `finally` runs. Replace the toy model with yours.

    {call}

Next: add `Accept: text/event-stream` to the request for server-sent events.
"""
import time

import paddock


class Model:
    def setup(self):
        # Load the weights here: once in each worker, before any request.
        self.delay = 0.05  # seconds per "token", to show the stream arriving

    @paddock.handler  # POST /v1/{name}: the answer streams
    def predict(self, req):
        data = req.json()
        prompt = data.get("prompt") if isinstance(data, dict) else None
        if not isinstance(prompt, str):
            raise paddock.BadRequest('send {"prompt": "..."}')
        try:
            for word in reversed(prompt.split()):  # stands in for model.generate()
                time.sleep(self.delay)
                yield word + "\n"
        finally:
            pass  # free what the generation held: runs when the client leaves too


if __name__ == "__main__":
    paddock.serve(Model())
