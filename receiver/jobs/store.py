"""The job store: what the rest of the receiver asks of jobs, each write one transaction.

The writes compose the per-table stores (`receiver.storage.jobs`, `.inbox`, `.tasks`) and the transitions
(`receiver.jobs.transitions`) into one transaction body each; after a write that may have queued tasks,
the task runner is woken. The reads are the per-table stores' own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from receiver.errors import ConflictError
from receiver.images.views import image_view
from receiver.jobs.idempotency import IdempotencyClaim, claim_key, held_job_id
from receiver.jobs.transitions import Ingest, Resubmit, apply_event, cancel_job, move_job
from receiver.models import Job, JobStatus, Outcome, ProviderEvent, Task
from receiver.storage import dashboard, images, inbox, jobs, tasks
from receiver.storage.base import Database, Transaction, UniqueViolation


class JobStore:
    def __init__(self, db: Database, *, on_task: Callable[[], None] | None = None) -> None:
        self.db = db
        self._on_task = on_task or (lambda: None)

    def set_task_listener(self, on_task: Callable[[], None]) -> None:
        """Called after a commit that enqueued tasks, so an idle runner wakes at once."""
        self._on_task = on_task

    async def create_job(
        self,
        *,
        job_id: str,
        provider: str,
        model: str,
        input: dict[str, Any],
        metadata: dict[str, Any] | None,
        callback_url: str | None,
        inputs: Sequence[tuple[str, str, bytes]] = (),
        now: float,
        idempotency: IdempotencyClaim | None = None,
    ) -> Job:
        """Insert a pending job, the input images we serve for it (key, content type, bytes) and its
        `submit` task, in one transaction.

        With `idempotency`, its key is stored in that same transaction; when the key is already held,
        nothing is inserted and the job holding it is returned (its id is not `job_id`), or
        `idempotency_key_reused` is raised if it was first used with a different body.
        """

        def write(tx: Transaction) -> Job:
            if idempotency is not None:
                held = claim_key(tx, idempotency, job_id, now)
                if held is not None:
                    return jobs.get(tx, held)
            jobs.insert(
                tx, job_id, provider=provider, model=model, input=input, metadata=metadata,
                callback_url=callback_url, now=now,
            )  # fmt: skip
            for key, content_type, data in inputs:
                jobs.insert_input(tx, key, job_id=job_id, content_type=content_type, data=data, now=now)
            tasks.insert(tx, "submit", job_id, now)
            return jobs.get(tx, job_id)

        job = await self.db.write(write)
        self._on_task()
        return job

    async def find_idempotent_job(self, claim: IdempotencyClaim) -> Job | None:
        """The job a stored idempotency key names (None if the key is new), or `idempotency_key_reused`.

        A read-only shortcut for retries; `create_job` decides for good inside its transaction.
        """
        row = await jobs.read_idempotency_key(self.db, scope=claim.scope, key=claim.key)
        return None if row is None else await jobs.read(self.db, held_job_id(claim, row))

    async def select_job(self, job_id: str) -> Job:
        return await jobs.read(self.db, job_id)

    async def list_jobs(self, *, status: str | None, provider: str | None, cursor: str | None, limit: int) -> list[Job]:
        return await jobs.list_page(self.db, status=status, provider=provider, cursor=cursor, limit=limit)

    async def list_inbox_for_job(self, job_id: str) -> list[dict[str, Any]]:
        return [dict(row) for row in await inbox.list_for_job(self.db, job_id)]

    async def select_input(self, key: str) -> tuple[str, bytes]:
        return await jobs.read_input(self.db, key)

    async def list_job_images(self, job_id: str, public_url: str) -> tuple[list[dict[str, Any]], Any]:
        """(stored output images, stored input image or None) of a job, as the API shows them."""
        rows = await images.read_job_images(self.db, job_id)
        outputs = [image_view(row, public_url) for row in rows if row["role"] == "output"]
        inputs = [image_view(row, public_url) for row in rows if row["role"] == "input"]
        return outputs, inputs[0] if inputs else None

    async def ingest(self, event: ProviderEvent, *, now: float, resubmit: Resubmit | None = None) -> Ingest:
        """Record a verified provider event and apply it to its job, in one transaction (see `apply_event`)."""
        policy = resubmit or Resubmit()
        result = await self.db.write(lambda tx: apply_event(tx, event, now, policy))
        self._on_task()
        return result

    async def claim_dispatch(
        self, job_id: str, *, provider: str, concurrency: int, rate_per_min: int, synchronous: bool, now: float
    ) -> bool:
        """Take one of the provider's slots for this job; False when the limits are reached (or it has one)."""

        def write(tx: Transaction) -> bool:
            return jobs.claim_dispatch(
                tx, job_id, provider=provider, concurrency=concurrency, rate_per_min=rate_per_min,
                synchronous=synchronous, now=now,
            )  # fmt: skip

        return await self.db.write(write)

    async def release_dispatch(self, job_id: str, *, now: float) -> None:
        """Give the slot back: the provider refused the submit before accepting it."""
        await self.db.write(lambda tx: jobs.release_dispatch(tx, job_id, now=now))

    async def record_submission(
        self,
        job_id: str,
        *,
        request_id: str | None,
        urls: dict[str, str] | None,
        error: dict[str, Any] | None,
        next_poll_at: float | None,
        poll_base_s: float = 10.0,
        task: Task,
        owner: str,
        now: float,
        event: ProviderEvent | None = None,
        queue_position: int | None = None,
    ) -> Job:
        """Store what the provider said about a submit, and finish the submit task, atomically; a
        synchronous provider's final answer (`event`) is recorded and applied in the same transaction.

        A job cancelled while its submit was in flight gets a `cancel` task for the provider.
        """

        def write(tx: Transaction) -> Job:
            try:
                jobs.record_submission(
                    tx, job_id, request_id=request_id, urls=urls, error=error, next_poll_at=next_poll_at,
                    poll_base_s=poll_base_s, now=now,
                )  # fmt: skip
            except UniqueViolation as exc:  # the request id is bound to another job already
                raise ConflictError(f"request {request_id} already belongs to another job") from exc
            tasks.complete(tx, task.id, owner=owner, attempts=task.attempts, now=now)
            if queue_position is not None:
                dashboard.record_queue_position(tx, job_id, position=queue_position, now=now)
            if event is not None:
                apply_event(tx, event, now, Resubmit())
            job = jobs.get_for_update(tx, job_id)  # locked: a cancel deciding meanwhile waits for this commit
            if job.status is JobStatus.CANCELLED and request_id:
                tasks.insert(tx, "cancel", job_id, now)
            return job

        job = await self.db.write(write)
        self._on_task()
        return job

    async def apply_outcome(
        self, job_id: str, outcome: Outcome, *, now: float, queue_position: int | None = None
    ) -> bool:
        """Move a job without a provider event (submit refused, timeout, a poll of a job still open: with the
        `queue_position` its provider told); returns whether it moved."""

        def write(tx: Transaction) -> bool:
            moved = move_job(tx, jobs.get_state(tx, job_id), outcome, now)
            if queue_position is not None:
                dashboard.record_queue_position(tx, job_id, position=queue_position, now=now)
            return moved

        moved = await self.db.write(write)
        self._on_task()
        return moved

    async def cancel_job(self, job_id: str, *, now: float) -> Job:
        """Mark a job cancelled (final) and queue the provider-side cancel if it was submitted."""
        job = await self.db.write(lambda tx: cancel_job(tx, job_id, now))
        self._on_task()
        return job
