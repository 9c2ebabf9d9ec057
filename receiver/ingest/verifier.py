"""Ed25519 verification off the event loop: a dedicated thread that verifies whatever has queued up.

`verify_any` checks with libsodium through cffi, which releases the GIL for the call (about 55 us of CPU;
`cryptography`'s Ed25519 verify, about 105 us, holds it), so a second thread puts the second core to work
while the event loop parses the next requests. Items are handed over in batches, like the writer's group
commit: one wake-up of the event loop per batch, not per item.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from receiver.ingest.signatures import verify_any
from receiver.support.batching import take_batch

MAX_BATCH = 256
_Item = tuple[Sequence[Ed25519PublicKey], bytes, bytes, "asyncio.Future[bool]", asyncio.AbstractEventLoop]


class ThreadedVerifier:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="receiver-verifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    async def verify_any(self, keys: Sequence[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
        """Whether any of `keys` verifies `signature` over `message` (computed on the verifier thread)."""
        if self._thread is None:
            return verify_any(keys, signature, message)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._queue.put((keys, signature, message, future, loop))
        return await future

    def _loop(self) -> None:
        stop = False
        while not stop:
            batch, stop = take_batch(self._queue, MAX_BATCH)
            if not batch:
                continue
            results: list[tuple[asyncio.Future[bool], Any]] = []
            for keys, signature, message, future, _ in batch:
                try:
                    results.append((future, verify_any(keys, signature, message)))
                except Exception as exc:  # never leave a caller waiting
                    results.append((future, exc))
            self.batches += 1
            self.items += len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], Any]]] = {}
            for (_, _, _, _, loop), result in zip(batch, results, strict=True):
                by_loop.setdefault(loop, []).append(result)
            for loop, settled in by_loop.items():
                loop.call_soon_threadsafe(_settle_all, settled)


def _settle_all(settled: list[tuple[asyncio.Future[bool], Any]]) -> None:
    for future, result in settled:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
