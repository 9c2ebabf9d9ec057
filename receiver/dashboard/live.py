"""`GET /ui/stream`: the jobs list's live feed, server-sent events of job rows as jobs are created and change.

Built on the API's stream machinery (`receiver.notify.stream`): the same stream slots
(`RECEIVER_STREAM_MAX_CLIENTS`) and the same `EventHub` wake-ups, which come at once when a job's final event
is committed; between those the feed looks for changed jobs every `LIVE_POLL_S`, since a job moving from
pending to running writes no event. Each message is `event: job` with a `JobRow.feed_item` as data and the
change time as its id, so a reconnecting browser (`Last-Event-ID`) misses nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import Response

from receiver.dashboard.auth import page_session
from receiver.dashboard.job_rows import JobRow
from receiver.notify.stream import STREAM_BUSY_RETRY_S, EventHub, EventStreamResponse
from receiver.storage import dashboard
from receiver.storage.base import Database
from receiver.support import jsontext
from receiver.web.http import error_response
from receiver.web.hygiene import RequestHygiene, browser_headers, split_host
from receiver.web.routes.common import services

LIVE_POLL_S = 1.0  # how often an open feed looks for jobs that changed without an event
MIN_LOOK_S = 0.25  # and at most this often, however fast final events come (each wakes every open feed)
OVERLAP_S = 2.0  # each look reaches this far behind the last change seen: a write committed late is not missed
RECENT_S = 3600.0  # finished jobs still change (their images are copied) for this long after finishing
MAX_BACKLOG_S = 600.0  # a feed resumes at most this far back
BATCH = 200


def parse_since(raw: str | None, now: float) -> float:
    """Where a feed starts: `raw` (Unix seconds: the page's render time, or a `Last-Event-ID`), at most
    MAX_BACKLOG_S back; now when absent or not a number."""
    try:
        since = float(raw) if raw is not None and len(raw) <= 32 else math.nan
    except ValueError:
        since = math.nan
    if not math.isfinite(since):
        return now
    return min(now, max(since, now - MAX_BACKLOG_S))


async def job_changes(
    db: Database,
    hub: EventHub,
    *,
    since: float,
    clock: Callable[[], float],
    ping_s: float,
    limit_s: float | None = None,
) -> AsyncIterator[str]:
    """`event: job` messages for every job that changes after `since`, and `: ping` comments while idle.

    Each look reads from OVERLAP_S before the newest change seen, page by page in (updated_at, id) order,
    and sends what it has not sent yet: a change committed a little late (another process's clock, a long
    transaction) still arrives."""
    loop = asyncio.get_running_loop()
    deadline = None if limit_s is None else loop.time() + limit_s
    sent: dict[str, float] = {}  # job id -> the change sent last, within the overlap window
    newest = since
    last_ping = loop.time()
    yield "retry: 2000\n\n"
    while deadline is None or loop.time() < deadline:
        generation, looked_at = hub.generation, loop.time()
        after, after_id = newest - OVERLAP_S, ""
        while True:
            rows = await dashboard.list_job_changes(
                db, since=after, after_id=after_id, recent=clock() - RECENT_S, limit=BATCH
            )
            for row in rows:
                changed_at = row["updated_at"]
                if sent.get(row["id"]) != changed_at:
                    sent[row["id"]] = changed_at
                    newest = max(newest, changed_at)
                    item = JobRow.from_row(row).feed_item()
                    yield f"id: {newest!r}\nevent: job\ndata: {jsontext.dumps_text(item)}\n\n"
            if len(rows) < BATCH:
                break
            after, after_id = rows[-1]["updated_at"], rows[-1]["id"]
        horizon = newest - OVERLAP_S
        for job_id in [job_id for job_id, changed_at in sent.items() if changed_at < horizon]:
            del sent[job_id]
        wait_s = LIVE_POLL_S if deadline is None else max(0.0, min(LIVE_POLL_S, deadline - loop.time()))
        await hub.wait(wait_s, since=generation)
        await asyncio.sleep(max(0.0, looked_at + MIN_LOOK_S - loop.time()))
        if loop.time() - last_ping >= ping_s:
            last_ping = loop.time()
            yield ": ping\n\n"


async def stream(request: Request) -> Response:
    """The feed, for a same-origin dashboard session only (401 without a session: a `/ui/` route answers no
    redirect; 403 for a request another site's page sent)."""
    host = split_host(request.headers.get("host", ""))
    if host is None or not RequestHygiene.same_origin_request(browser_headers(request.scope["headers"]), host):
        # Another site's page may not hold one of the stream slots (an open dashboard has no login to stop it).
        return error_response(
            403, "cross_site_request", "a request sent from another site (Origin / Sec-Fetch-Site) is refused"
        )
    session = await page_session(request)
    if isinstance(session, Response):
        return session
    svc = services(request)
    raw = request.headers.get("last-event-id") or request.query_params.get("since")
    since = parse_since(raw, svc.clock())
    if not svc.hub.open_stream(svc.settings.stream_max_clients):
        message = f"{svc.settings.stream_max_clients} streams are open already (RECEIVER_STREAM_MAX_CLIENTS)"
        return error_response(503, "too_many_streams", message, {"Retry-After": str(int(STREAM_BUSY_RETRY_S))})
    body = job_changes(svc.db, svc.hub, since=since, clock=svc.clock, ping_s=svc.settings.stream_ping_s)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return EventStreamResponse(body, on_close=svc.hub.close_stream, headers=headers)
