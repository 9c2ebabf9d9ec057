"""Announcing a final job: the `notify` task handler (`job.failed`, `job.cancelled`), and the one way a task
emits its job's event exactly once (the `fetch_images` task ends with `job.succeeded` through it)."""

from __future__ import annotations

from collections.abc import Callable

from receiver.models import IdFactory, Task
from receiver.notify.fanout import emit_job_event
from receiver.settings import Settings
from receiver.storage import tasks
from receiver.storage.base import Database, Transaction
from receiver.tasks.runner import TaskContext


class Announcer:
    """The `notify` task handler, and `announce` for every task that ends with a job event."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        clock: Callable[[], float],
        on_event: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.on_event = on_event
        self.ids = IdFactory()

    async def handle_notify(self, task: Task, ctx: TaskContext) -> None:
        """Emit `job.failed` / `job.cancelled` (and their deliveries) exactly once."""
        event_type = str(task.payload.get("event", "job.failed"))
        await self.db.write(lambda tx: self.announce(tx, str(task.job_id), event_type, task, ctx))
        ctx.finished = True
        self.on_event()

    def announce(self, tx: Transaction, job_id: str, event_type: str, task: Task, ctx: TaskContext) -> None:
        """Finish `task` and emit the job's event with its deliveries, unless the task's lease was lost (the
        caller sets `ctx.finished` once this write is committed)."""
        # Completing the task in the same transaction makes the event exactly-once across crashes.
        if tasks.complete(tx, task.id, owner=ctx.owner, attempts=task.attempts, now=self.clock()):
            emit_job_event(tx, job_id, event_type, self.clock(), public_url=self.settings.public_url, ids=self.ids)
