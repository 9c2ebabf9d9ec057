"""The reconciler: the backstop for lost webhooks. Polls quiet jobs and fails the ones past their timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from receiver.tasks.queue import Outbox

log = logging.getLogger(__name__)


class Reconciler:
    """Every `interval_s`: queue a `poll` task for each open job whose next poll is due (first its
    provider's `first_poll_after_s` after submission, then at doubling gaps from the provider's
    `poll_interval_s` up to `poll_max_interval_s`), and fail
    every job still open `job_timeout_s` after creation."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        clock: Callable[[], float],
        interval_s: float,
        poll_max_interval_s: float,
        job_timeout_s: float,
        on_tasks: Callable[[], None] = lambda: None,
        batch: int = 200,
    ) -> None:
        self.outbox = outbox
        self.clock = clock
        self.interval_s = interval_s
        self.poll_max_interval_s = poll_max_interval_s
        self.job_timeout_s = job_timeout_s
        self.on_tasks = on_tasks
        self.batch = batch
        self._stop = asyncio.Event()

    async def run_once(self) -> tuple[list[str], list[str]]:
        """One pass; returns (jobs queued for a poll, jobs timed out)."""
        now = self.clock()
        expired = await self.outbox.expire_jobs(
            deadline=now - self.job_timeout_s, now=now, timeout_s=self.job_timeout_s
        )
        for job_id in expired:
            log.warning("job %s timed out after %.0f s", job_id, self.job_timeout_s)
        polled = await self.outbox.schedule_polls(now=now, limit=self.batch, max_interval_s=self.poll_max_interval_s)
        if polled or expired:
            self.on_tasks()
        return polled, expired

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("reconciler pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval_s)

    def stop(self) -> None:
        self._stop.set()
