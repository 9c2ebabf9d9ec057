"""Reading `GET /v1/stream` over real HTTP line by line, up to what a test waits for (no time limit on the stream:
a stream cut after a fixed time may end before a busy server has sent its first event)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx

from tests.helpers.stack import Stack
from tests.helpers.waiting import DEADLINE_S


@contextlib.asynccontextmanager
async def open_stream(stack: Stack, *, last_event_id: str | None = None) -> AsyncIterator[AsyncIterator[str]]:
    """An open stream (its own connection) once the server has answered 200; yields its lines."""
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
        async with client.stream("GET", "/v1/stream", headers=headers) as response:
            assert response.status_code == 200
            yield response.aiter_lines()


async def read_until(lines: AsyncIterator[str], needle: str, *, timeout_s: float = DEADLINE_S) -> list[str]:
    """Lines read up to and including the first one containing `needle` (`timeout_s` only bounds a hang)."""
    seen: list[str] = []
    async with asyncio.timeout(timeout_s):
        async for line in lines:
            seen.append(line)
            if needle in line:
                return seen
    raise AssertionError(f"the stream ended before {needle!r}: {seen}")
