wrk.method = "POST"
wrk.body = '{"text": "the quick brown fox jumps over the lazy dog"}'
wrk.headers["Content-Type"] = "application/json"
