"""The reconciler: the backstop for lost webhooks. Polls quiet jobs and fails the ones past their timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from receiver.jobs.transitions import expire_jobs
from receiver.storage import jobs, tasks
from receiver.storage.base import Database, Transaction

log = logging.getLogger(__name__)


def schedule_polls(tx: Transaction, *, now: float, limit: int, max_interval_s: float) -> list[str]:
    """Queue a `poll` task for every open job whose next poll is due; space its next poll out (the job's
    provider pace, doubling per poll, capped); returns their ids."""
    due = jobs.due_polls(tx, now=now, limit=limit)
    for row in due:
        tasks.insert(tx, "poll", row["id"], now)
        gap = min(max_interval_s, row["poll_base_s"] * 2 ** min(row["poll_count"], 20))
        jobs.schedule_next_poll(tx, row["id"], next_poll_at=now + gap)
    return [row["id"] for row in due]


class Reconciler:
    """Every `interval_s`: queue a `poll` task for each open job whose next poll is due (first its
    provider's `first_poll_after_s` after submission, then at doubling gaps from the provider's
    `poll_interval_s` up to `poll_max_interval_s`), and fail
    every job still open `job_timeout_s` after creation."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float],
        interval_s: float,
        poll_max_interval_s: float,
        job_timeout_s: float,
        on_tasks: Callable[[], None] = lambda: None,
        batch: int = 200,
    ) -> None:
        self.db = db
        self.clock = clock
        self.interval_s = interval_s
        self.poll_max_interval_s = poll_max_interval_s
        self.job_timeout_s = job_timeout_s
        self.on_tasks = on_tasks
        self.batch = batch
        self._stop = asyncio.Event()

    async def run_once(self) -> tuple[list[str], list[str]]:
        """One pass; returns (jobs queued for a poll, jobs timed out)."""
        now, timeout_s = self.clock(), self.job_timeout_s
        deadline = now - timeout_s
        expired = await self.db.write(lambda tx: expire_jobs(tx, deadline=deadline, now=now, timeout_s=timeout_s))
        for job_id in expired:
            log.warning("job %s timed out after %.0f s", job_id, timeout_s)
        limit, max_interval_s = self.batch, self.poll_max_interval_s
        polled = await self.db.write(lambda tx: schedule_polls(tx, now=now, limit=limit, max_interval_s=max_interval_s))
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
