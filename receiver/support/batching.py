"""Draining a work queue in batches: the shared loop of the writer and the verifier threads."""

from __future__ import annotations

import queue
from typing import TypeVar

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
