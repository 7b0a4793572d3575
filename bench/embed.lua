wrk.method = "POST"
wrk.body = '{"input": "The weather is lovely today, so we walk to the park.", "model": "all-MiniLM-L6-v2"}'
wrk.headers["Content-Type"] = "application/json"
