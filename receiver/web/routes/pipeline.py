"""Stored images, subscriptions, deliveries and the live feed."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from receiver.errors import InputError, NotFoundError, RetryLaterError
from receiver.notify.stream import STREAM_BUSY_RETRY_S, EventStreamResponse, event_stream, latest_event_seq
from receiver.validation import describe_validation_error
from receiver.web.http import JSONResponse, read_json
from receiver.wiring import Services

SHA256 = re.compile(r"^[0-9a-f]{64}$")
DELIVERY_STATUSES = ("pending", "delivered", "failed", "dead")
MAX_EVENT_ID_DIGITS = 18  # SQLite integers are 64-bit: a longer id could not even be compared


class ReplayFilter(BaseModel):
    """The body of `POST /v1/deliveries/replay` (give at least one field)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str | None = Field(None, max_length=200)
    subscription_id: str | None = Field(None, max_length=200)
    status: Literal["pending", "delivered", "failed", "dead"] | None = None
    since: float | None = Field(None, allow_inf_nan=False, description="Created at or after (Unix seconds).")
    until: float | None = Field(None, allow_inf_nan=False, description="Created before (Unix seconds).")


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def get_image(request: Request) -> Response:
    """Stored image bytes (content-addressed, so cacheable forever); `?thumbnail=1` for the WebP thumbnail."""
    svc = services(request)
    sha = request.path_params["sha256"]
    if not SHA256.match(sha):
        raise NotFoundError("no such image")
    row = await svc.db.fetch_one("SELECT content_type, thumbnail_sha256 FROM images WHERE sha256 = ?", (sha,))
    if row is None:
        raise NotFoundError("no such image")
    content_type, key = row["content_type"], sha
    if request.query_params.get("thumbnail") and row["thumbnail_sha256"]:
        content_type, key = "image/webp", row["thumbnail_sha256"]
    data = await svc.blobs.get(key)
    if data is None:
        raise NotFoundError("image bytes are missing from the blob store")
    headers = {
        "Cache-Control": "public, max-age=31536000, immutable",
        "ETag": f'"{key}"',
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == f'"{key}"':
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=content_type, headers=headers)


async def create_subscription(request: Request) -> JSONResponse:
    svc = services(request)
    body = await read_json(request, svc.settings.max_body_bytes)
    return JSONResponse(await svc.subscriptions.create(body), status_code=201)


async def list_subscriptions(request: Request) -> JSONResponse:
    return JSONResponse({"subscriptions": await services(request).subscriptions.list_all()})


async def delete_subscription(request: Request) -> Response:
    await services(request).subscriptions.delete(request.path_params["sub_id"])
    return Response(status_code=204)


async def rotate_secret(request: Request) -> JSONResponse:
    return JSONResponse(await services(request).subscriptions.rotate_secret(request.path_params["sub_id"]))


async def test_subscription(request: Request) -> JSONResponse:
    svc = services(request)
    attempt = await svc.send_test(request.path_params["sub_id"])
    return JSONResponse(attempt)


def _number(request: Request, name: str, *, meaning: str = "Unix seconds") -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"{name}: must be {meaning}")
    return value


def delivery_filters(request: Request, body: dict[str, object] | None = None) -> dict[str, object]:
    source = body if body is not None else request.query_params
    status = source.get("status")
    if status is not None and status not in DELIVERY_STATUSES:
        raise InputError(f"status: must be one of {list(DELIVERY_STATUSES)}")
    return {
        "job_id": source.get("job_id"),
        "subscription_id": source.get("subscription_id"),
        "status": status,
        "since": source.get("since") if body is not None else _number(request, "since"),
        "until": source.get("until") if body is not None else _number(request, "until"),
    }


async def list_deliveries(request: Request) -> JSONResponse:
    svc = services(request)
    raw_limit = request.query_params.get("limit", "50")
    # The length check first: `int` refuses digit runs over 4300 characters with a ValueError.
    if not raw_limit.isascii() or not raw_limit.isdigit() or len(raw_limit) > 6 or not 1 <= int(raw_limit) <= 500:
        raise InputError("limit: must be an integer from 1 to 500")
    limit = int(raw_limit)
    rows = await svc.subscriptions.list_deliveries(
        **delivery_filters(request), cursor=request.query_params.get("cursor"), limit=limit + 1
    )
    page = rows[:limit]
    return JSONResponse({"deliveries": page, "next_cursor": page[-1]["id"] if len(rows) > limit else None})


async def retry_delivery(request: Request) -> JSONResponse:
    svc = services(request)
    delivery_id = request.path_params["delivery_id"]
    if await svc.db.fetch_one("SELECT 1 FROM deliveries WHERE id = ?", (delivery_id,)) is None:
        raise NotFoundError(f"delivery {delivery_id} not found")
    return JSONResponse({"requeued": await svc.subscriptions.retry([delivery_id])}, status_code=202)


async def replay_deliveries(request: Request) -> JSONResponse:
    """Bulk replay by subscription, job, status and/or time range (`since`/`until`, Unix seconds)."""
    svc = services(request)
    try:
        replay = ReplayFilter.model_validate(await read_json(request, svc.settings.max_body_bytes))
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc, prefix="")) from None
    body = replay.model_dump()
    if all(value is None for value in body.values()):
        raise InputError("body: give at least one of job_id, subscription_id, status, since, until")
    requeued = await svc.subscriptions.replay(**delivery_filters(request, body))
    return JSONResponse({"requeued": requeued}, status_code=202)


async def stream(request: Request) -> StreamingResponse:
    """Events after `Last-Event-ID`; without one, only events from now on (never the whole log)."""
    svc = services(request)
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is not None and (not raw.isascii() or not raw.isdigit() or len(raw) > MAX_EVENT_ID_DIGITS):
        raise InputError("Last-Event-ID: must be an event id from this stream")
    limit_s = _number(request, "limit_s", meaning="a positive number of seconds")
    if limit_s is not None and limit_s <= 0:
        raise InputError("limit_s: must be a positive number of seconds")
    after = int(raw) if raw is not None else await latest_event_seq(svc.db)
    if not svc.hub.open_stream(svc.settings.stream_max_clients):
        raise RetryLaterError(
            f"stream: {svc.settings.stream_max_clients} streams are open already (RECEIVER_STREAM_MAX_CLIENTS)",
            retry_after_s=STREAM_BUSY_RETRY_S,
            code="too_many_streams",
        )
    body = event_stream(svc.db, svc.hub, after=after, ping_s=svc.settings.stream_ping_s, limit_s=limit_s)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return EventStreamResponse(body, on_close=svc.hub.close_stream, headers=headers)


async def get_callback_secret(request: Request) -> JSONResponse:
    """The secret that signs `callback_url` deliveries (Standard Webhooks), for receivers to verify with."""
    return JSONResponse({"secret": services(request).deliverer.callback_secret})


routes = [
    Route("/v1/images/{sha256}", get_image, methods=["GET"]),
    Route("/v1/subscriptions", create_subscription, methods=["POST"]),
    Route("/v1/subscriptions", list_subscriptions, methods=["GET"]),
    Route("/v1/subscriptions/{sub_id}", delete_subscription, methods=["DELETE"]),
    Route("/v1/subscriptions/{sub_id}/rotate-secret", rotate_secret, methods=["POST"]),
    Route("/v1/subscriptions/{sub_id}/test", test_subscription, methods=["POST"]),
    Route("/v1/deliveries", list_deliveries, methods=["GET"]),
    Route("/v1/deliveries/replay", replay_deliveries, methods=["POST"]),
    Route("/v1/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]),
    Route("/v1/stream", stream, methods=["GET"]),
    Route("/v1/callback-secret", get_callback_secret, methods=["GET"]),
]
