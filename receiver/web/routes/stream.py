"""`GET /v1/stream`: the live feed of job events, as server-sent events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import StreamingResponse

from receiver.errors import InputError, RetryLaterError
from receiver.notify.stream import STREAM_BUSY_RETRY_S, EventStreamResponse, event_stream, latest_event_seq
from receiver.web.operations import TEXT, Operation, Param, Reply
from receiver.web.routes.common import query_number, services, short_digits

MAX_EVENT_ID_DIGITS = 18  # SQLite integers are 64-bit: a longer id could not even be compared
EVENT_ID = {"type": "string", "pattern": f"^[0-9]{{1,{MAX_EVENT_ID_DIGITS}}}$"}


async def stream(request: Request) -> StreamingResponse:
    """Events after `Last-Event-ID`; without one, only events from now on (never the whole log)."""
    svc = services(request)
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    last_event_id = short_digits(raw, MAX_EVENT_ID_DIGITS)
    if raw is not None and last_event_id is None:
        raise InputError("Last-Event-ID: must be an event id from this stream")
    limit_s = query_number(request, "limit_s", meaning="a positive number of seconds")
    if limit_s is not None and limit_s <= 0:
        raise InputError("limit_s: must be a positive number of seconds")
    after = last_event_id if last_event_id is not None else await latest_event_seq(svc.db)
    if not svc.hub.open_stream(svc.settings.stream_max_clients):
        raise RetryLaterError(
            f"stream: {svc.settings.stream_max_clients} streams are open already (RECEIVER_STREAM_MAX_CLIENTS)",
            retry_after_s=STREAM_BUSY_RETRY_S,
            code="too_many_streams",
        )
    body = event_stream(svc.db, svc.hub, after=after, ping_s=svc.settings.stream_ping_s, limit_s=limit_s)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return EventStreamResponse(body, on_close=svc.hub.close_stream, headers=headers)


operations = [
    Operation(
        "GET",
        "/v1/stream",
        stream,
        summary="Server-sent events of job events",
        tag="jobs",
        ok=Reply(
            200,
            "`id`/`event`/`data` per event; `: ping` while idle.",
            media={"text/event-stream": {"schema": TEXT}},
        ),
        errors=(422, 503),
        params=(
            Param(
                "header",
                "Last-Event-ID",
                EVENT_ID,
                "Resume after this event id (`0`: the whole log; none: from now).",
            ),
            Param("query", "last_event_id", EVENT_ID, "The same, for clients that cannot set headers."),
            Param("query", "limit_s", {"type": "number", "exclusiveMinimum": 0}, "End the stream after this long."),
        ),
    )
]
