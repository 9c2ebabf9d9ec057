"""Draining a work queue in batches: the shared loop of the writer and the verifier threads."""

from __future__ import annotations

import asyncio
import queue
from typing import Any, TypeVar

T = TypeVar("T")


def take_batch(source: queue.SimpleQueue[T | None], limit: int) -> tuple[list[T], bool]:
    """Wait for one item, then take whatever else is already queued, up to `limit` items.

    Returns (batch, stop): `stop` is True once the `None` sentinel was taken (the batch before it
    is still to be handled).
    """
    first = source.get()
    if first is None:
        return [], True
    batch = [first]
    while len(batch) < limit:
        try:
            item = source.get_nowait()
        except queue.Empty:
            break
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False


def settle_all(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Resolve each (future, ok, value) of a committed batch: one wake-up per event loop per batch."""
    for future, ok, value in settled:
        settle(future, ok, value)


def settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Resolve `future` with `value` (or raise it when not `ok`), unless its caller gave up waiting."""
    if future.done():  # the awaiting request was cancelled; the write stands regardless
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
