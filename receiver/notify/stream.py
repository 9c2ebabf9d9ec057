"""The live feed behind `GET /v1/stream`: server-sent events from the event log, resumable by id."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from receiver.storage import events
from receiver.storage.base import Database
from receiver.support import jsontext

STREAM_BUSY_RETRY_S = 5.0  # the Retry-After of a stream refused because the process has too many open


class EventHub:
    """Wakes every open stream when new events were committed (by this process, or by another one: see
    `Services.woken_by_others`), and counts the open streams.

    Each `notify()` starts a new generation: a stream notes the generation before it reads the event log
    and waits only if nothing was committed since, so a commit that lands while it reads (or while another
    stream is woken) is never slept through."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self.generation = 0
        self.open_streams = 0

    def open_stream(self, max_streams: int) -> bool:
        """Take a stream slot; False when `max_streams` are open already (this process)."""
        if self.open_streams >= max_streams:
            return False
        self.open_streams += 1
        return True

    def close_stream(self) -> None:
        self.open_streams -= 1

    def notify(self) -> None:
        self.generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, timeout_s: float, *, since: int | None = None) -> None:
        """Until the next `notify()` or `timeout_s`; at once if one came after generation `since`."""
        if since is not None and since != self.generation:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout=timeout_s)


class EventTail:
    """Turns "another process committed something" into `hub.notify()` only when the event log grew: one
    read per burst of commits, and none while no stream is open. Most commits are not events (ingest,
    task claims and outcomes), and a spurious wake-up costs every open stream a read."""

    def __init__(self, db: Database, hub: EventHub) -> None:
        self.db, self.hub = db, hub
        self._seq: int | None = None
        self._checking: asyncio.Task[None] | None = None
        self._again = False

    def changed(self) -> None:
        if not self.hub.open_streams:
            self._seq = None  # not followed meanwhile: the next check wakes the streams
            return
        if self._checking is not None and not self._checking.done():
            self._again = True  # the check in flight may have read too early: read once more after it
            return
        self._checking = asyncio.create_task(self._check(), name="event-tail")

    async def _check(self) -> None:
        while True:
            self._again = False
            try:
                seq: int | None = await events.last_event_seq(self.db)
            except Exception:  # cannot tell: wake the streams, they read the log themselves
                seq = None
            if seq is None or seq != self._seq:
                self._seq = seq
                self.hub.notify()
            if not self._again:
                return

    async def aclose(self) -> None:
        if self._checking is not None:
            self._checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checking


class EventStreamResponse(StreamingResponse):
    """An SSE response that gives its stream slot back however it ends: finished, client gone, or
    cancelled at shutdown (a body generator's own `finally` never runs if it never started)."""

    def __init__(self, content: AsyncIterator[str], *, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, media_type="text/event-stream", **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def latest_event_seq(db: Database) -> int:
    """The id of the newest event: a stream without `Last-Event-ID` starts after it."""
    return await events.last_event_seq(db)


def sse(seq: int, event_type: str, data: str) -> str:
    return f"id: {seq}\nevent: {event_type}\ndata: {data}\n\n"


async def event_stream(
    db: Database, hub: EventHub, *, after: int, ping_s: float, batch: int = 200, limit_s: float | None = None
) -> AsyncIterator[str]:
    """Every event with `seq > after`, then new ones as they come, with `: ping` comments while idle.

    `limit_s` ends the stream after that long (tests); clients reconnect with `Last-Event-ID`.
    """
    loop = asyncio.get_running_loop()
    deadline = None if limit_s is None else loop.time() + limit_s
    yield "retry: 2000\n\n"
    while deadline is None or loop.time() < deadline:
        generation = hub.generation
        rows = await events.events_after(db, after, limit=batch)
        for row in rows:
            after = row["seq"]
            yield sse(row["seq"], row["type"], jsontext.dumps_text(json.loads(row["payload"])))
        if len(rows) == batch:
            continue
        await hub.wait(ping_s if deadline is None else min(ping_s, max(0.0, deadline - loop.time())), since=generation)
        yield ": ping\n\n"
