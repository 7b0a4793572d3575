"""The uvicorn + FastAPI side of the gateway benchmark.

Both handlers are `async def`, so each worker process runs one handler at a time on
its event loop — the same "one model, one thread" rule paddock enforces (a sync `def`
would run in a thread pool, which is what seed 002 warns against for GPU models).
"""
import time

from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/echo")
async def echo(request: Request):
    body = await request.body()
    return Response(body, media_type=request.headers.get("content-type"))


@app.post("/sleep10")
async def sleep10(request: Request):
    body = await request.body()
    time.sleep(0.010)
    return Response(body, media_type=request.headers.get("content-type"))
