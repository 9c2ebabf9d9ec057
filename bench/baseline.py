"""Baseline servers for `scripts/bench`: a bare POST, + fal verification, + one INSERT/COMMIT per request.

Run as `uvicorn bench.baseline:app` with BENCH_MODE=bare|verify|naive and BENCH_JWK_X / BENCH_DB set.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator

import aiosqlite
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.errors import SignatureError
from receiver.ingest.signatures import parse_jwks, verify_fal

MODE = os.environ.get("BENCH_MODE", "bare")
KEYS = parse_jwks({"keys": [{"x": os.environ.get("BENCH_JWK_X", "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w")}]})
DB_PATH = os.environ.get("BENCH_DB", "/tmp/bench-naive.db")
state: dict[str, aiosqlite.Connection] = {}


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})  # for the start-up wait only; never measured


async def bare(request: Request) -> Response:
    await request.body()
    return JSONResponse({"status": "ok"})


async def verify(request: Request) -> Response:
    body = await request.body()
    try:
        facts = verify_fal(KEYS, request.headers, body, now=time.time())
    except SignatureError as exc:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status_code)
    json.loads(body)
    if MODE == "naive":
        db = state["db"]
        await db.execute(
            "INSERT INTO inbox (dedup_key, body, received_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (facts.request_id, body, time.time()),
        )
        await db.commit()
    return JSONResponse({"status": "applied"})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    if MODE == "naive":
        db = await aiosqlite.connect(DB_PATH)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("CREATE TABLE IF NOT EXISTS inbox (dedup_key TEXT UNIQUE, body BLOB, received_at REAL)")
        await db.commit()
        state["db"] = db
    yield
    if "db" in state:
        await state.pop("db").close()


app = Starlette(
    routes=[
        Route("/webhooks/{rest:path}", bare if MODE == "bare" else verify, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ],
    lifespan=lifespan,
)
