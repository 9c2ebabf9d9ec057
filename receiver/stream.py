"""The live feed behind `GET /v1/stream`: server-sent events from the event log, resumable by id."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from receiver import jsontext
from receiver.db import Database, Q


class EventHub:
    """Wakes every open stream when new events were committed."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()

    async def wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout=timeout_s)
        self._changed.clear()


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
        rows = await db.fetch_all(Q["list_events_after"], (after, batch))
        for row in rows:
            after = row["seq"]
            yield sse(row["seq"], row["type"], jsontext.dumps_text(json.loads(row["payload"])))
        if len(rows) == batch:
            continue
        await hub.wait(ping_s if deadline is None else min(ping_s, max(0.0, deadline - loop.time())))
        yield ": ping\n\n"
