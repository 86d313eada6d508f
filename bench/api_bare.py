"""Anchor for bench/api.py: a bare FastAPI endpoint returning a constant JSON body (no validation, no work)."""

from fastapi import FastAPI
from fastapi.responses import Response

app = FastAPI()
BODY = b'{"universal_id":"sf_b8783dbfc0024695","trigger_timestamp_utc":"2026-01-16T23:55:00Z","confidence_score":0.72}'


@app.post("/timing-decision")
async def decision() -> Response:
    return Response(BODY, media_type="application/json")


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}
