"""Waiting for something a test cannot be told about by an event: poll it, with a deadline that only bounds a hang."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

DEADLINE_S = 15.0  # bounds a broken run; no test relies on how long anything takes


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = DEADLINE_S, what: str = "condition"
) -> None:
    """Poll `predicate()` (sync or async) every 5 ms until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.005)
