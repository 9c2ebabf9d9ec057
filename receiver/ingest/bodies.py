"""Signed webhook bodies: large ones read and parsed off the event loop a few at a time, unusable ones named.

A provider may legitimately send a webhook of tens of megabytes (fal inlines images as data URIs). Hashing
and parsing one on the event loop stalls every other request for hundreds of milliseconds, and reading
many at once (a leaked webhook URL with bad signatures is enough) costs their size each in memory. So a
body over `LARGE_BODY_BYTES` (or of unknown length) waits for one of `WebhookGate`'s slots before it is
read, and its hashing and parsing run on a worker thread; a webhook that waits too long is answered 503
with `Retry-After`, which every provider retries. Small bodies (every ordinary completion) take neither
the gate nor a thread hop: that is the ingest path's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from receiver.errors import RetryLaterError
from receiver.support import jsontext

LARGE_BODY_BYTES = 256 * 1024  # as the API's inline-parse limit: smaller bodies parse in well under 1 ms
GATE_SLOTS = 1  # large webhook bodies read, verified and recorded at once (~6x their size in memory each)
GATE_WAIT_S = 5.0  # then 503: providers give a delivery 10-15 s, and retry a 503
READ_S = 30.0  # a large body arriving slower than this gives its slot up (a slow sender must not hold it)
_P = ParamSpec("_P")
_T = TypeVar("_T")


class UnusableSignedBody(Exception):
    """A body whose signature verified but which holds a value JSON cannot carry (`1e999`, a lone surrogate).

    `request_id` is the provider request the signature binds it to (fal: the signed header; WaveSpeed: the
    body's prediction `id`, read leniently), so the job's request-id binding applies as for any event."""

    def __init__(self, cause: jsontext.UnrepresentableJSONError, *, request_id: str) -> None:
        super().__init__(cause.message)
        self.cause = cause
        self.request_id = request_id


def is_large(declared_length: str | None) -> bool:
    """Whether a body declaring this `Content-Length` (None: chunked, its size known only once read) takes
    the gated path."""
    if declared_length is None or not (declared_length.isascii() and declared_length.isdigit()):
        return True
    return len(declared_length) > 18 or int(declared_length) > LARGE_BODY_BYTES


async def off_loop(body: bytes, func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """`func(*args, **kwargs)` (work proportional to `body`): inline for a small body, else on a worker
    thread; `WebhookGate` bounds how many large bodies get here at once."""
    if len(body) <= LARGE_BODY_BYTES:
        return func(*args, **kwargs)
    return await asyncio.to_thread(func, *args, **kwargs)


async def parse_signed(body: bytes) -> Any:
    """A verified body as strict JSON (see `receiver.support.jsontext`); raises as `jsontext.loads` does."""
    return await off_loop(body, jsontext.loads, body)


def read_member(body: bytes, key: str) -> str | None:
    """`body[key]` as a string from a lenient parse (non-finite and huge numbers, lone surrogates allowed),
    or None: what a body strict parsing refused still says about which request it is for."""
    try:
        data = json.loads(body.decode(), parse_int=str, parse_float=str, parse_constant=str)
    except (ValueError, RecursionError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    if value is None or isinstance(value, dict | list) or not jsontext.is_encodable(str(value)):
        return None  # a lone surrogate in an id could be neither stored nor compared sensibly
    return str(value)


async def read_within(reading: Awaitable[_T], timeout_s: float | None = None) -> _T:
    """The body read by `reading`, or a 503 error (the provider resends) when it takes over `READ_S`."""
    try:
        return await asyncio.wait_for(reading, READ_S if timeout_s is None else timeout_s)
    except TimeoutError:
        raise RetryLaterError("the body did not arrive in time; try again", code="busy", retry_after_s=1.0) from None


class WebhookGate:
    """At most `slots` large webhook bodies in flight (read, verified, recorded); others wait `wait_s`."""

    def __init__(self, *, slots: int | None = None, wait_s: float | None = None) -> None:
        self.slots = asyncio.Semaphore(GATE_SLOTS if slots is None else slots)
        self.wait_s = wait_s  # None: GATE_WAIT_S

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block, or raise a 503 error after waiting `wait_s` for one."""
        try:
            await asyncio.wait_for(self.slots.acquire(), GATE_WAIT_S if self.wait_s is None else self.wait_s)
        except TimeoutError:
            raise RetryLaterError(
                "too many large webhook bodies at once; try again", code="busy", retry_after_s=1.0
            ) from None
        try:
            yield
        finally:
            self.slots.release()
