"""The store: every read and write of jobs, inbox events and tasks, each write one transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from receiver.errors import ConflictError, NotFoundError
from receiver.jobs.idempotency import IdempotencyClaim, claim_key, held_job_id
from receiver.jobs.transitions import Ingest, Resubmit, apply_event, dumps, get_job, insert_task, move_job
from receiver.models import TERMINAL_STATUSES, Job, JobStatus, Outcome, ProviderEvent, Task
from receiver.notify.fanout import image_view
from receiver.storage.sqlite import Database, Q
from receiver.support import jsontext

__all__ = ["Ingest", "Q", "Resubmit", "Store", "dumps", "insert_task"]


class Store:
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

        def write(conn: sqlite3.Connection) -> Job:
            if idempotency is not None:
                held = claim_key(conn, idempotency, job_id, now)
                if held is not None:
                    return get_job(conn, held)
            conn.execute(
                Q["insert_job"],
                {
                    "id": job_id,
                    "provider": provider,
                    "model": model,
                    # A data-URI image is megabytes: encoded a slice at a time (see `jsontext.dumps`).
                    "input": jsontext.dumps(input, big=jsontext.holds_big_string(input)).decode(),
                    "metadata": dumps(metadata),
                    "callback_url": callback_url,
                    "now": now,
                },
            )
            for key, content_type, data in inputs:
                params = {"key": key, "job_id": job_id, "content_type": content_type, "data": data, "now": now}
                conn.execute(Q["insert_input"], params)
            insert_task(conn, "submit", job_id, now)
            return get_job(conn, job_id)

        job = await self.db.writer.run(write)
        self._on_task()
        return job

    async def find_idempotent_job(self, claim: IdempotencyClaim) -> Job | None:
        """The job a stored idempotency key names (None if the key is new), or `idempotency_key_reused`.

        A read-only shortcut for retries; `create_job` decides for good inside its transaction.
        """
        params = {"scope": claim.scope, "key": claim.key}
        row = await self.db.fetch_one(Q["select_idempotency_key"], params)
        return None if row is None else await self.select_job(held_job_id(claim, row))

    async def purge_idempotency_keys(self, *, before: float) -> int:
        """Delete idempotency keys stored before `before` (Unix s); callers keep at least `RETENTION_S`."""
        params = {"before": before}
        return await self.db.writer.run(lambda conn: conn.execute(Q["purge_idempotency_keys"], params).rowcount)

    async def select_job(self, job_id: str) -> Job:
        row = await self.db.fetch_one(Q["select_job"], {"id": job_id})
        if row is None:
            raise NotFoundError(f"job {job_id} not found")
        return Job.from_row(row)

    async def list_jobs(self, *, status: str | None, provider: str | None, cursor: str | None, limit: int) -> list[Job]:
        params = {"status": status, "provider": provider, "cursor": cursor, "limit": limit}
        return [Job.from_row(row) for row in await self.db.fetch_all(Q["list_jobs"], params)]

    async def list_inbox_for_job(self, job_id: str) -> list[dict[str, Any]]:
        rows = await self.db.fetch_all(Q["list_inbox_for_job"], (job_id,))
        return [dict(row) for row in rows]

    async def ingest(self, event: ProviderEvent, *, now: float, resubmit: Resubmit | None = None) -> Ingest:
        """Record a verified provider event and apply it to its job, in one transaction (see `apply_event`)."""
        policy = resubmit or Resubmit()
        result = await self.db.writer.run(lambda conn: apply_event(conn, event, now, policy))
        self._on_task()
        return result

    async def claim_dispatch(
        self, job_id: str, *, provider: str, concurrency: int, rate_per_min: int, synchronous: bool, now: float
    ) -> bool:
        """Take one of the provider's slots for this job; False when the limits are reached (or it has one)."""
        params = {
            "id": job_id,
            "provider": provider,
            "concurrency": concurrency,
            "rate_per_min": rate_per_min,
            "synchronous": synchronous,
            "now": now,
        }
        return await self.db.writer.run(lambda conn: conn.execute(Q["claim_dispatch"], params).rowcount == 1)

    async def release_dispatch(self, job_id: str, *, now: float) -> None:
        """Give the slot back: the provider refused the submit before accepting it."""
        await self.db.writer.run(lambda conn: conn.execute(Q["release_dispatch"], {"id": job_id, "now": now}))

    async def list_job_images(self, job_id: str, public_url: str) -> tuple[list[dict[str, Any]], Any]:
        """(stored output images, stored input image or None) of a job, as the API shows them."""
        rows = await self.db.fetch_all(Q["list_job_images"], {"job_id": job_id})
        outputs = [image_view(row, public_url) for row in rows if row["role"] == "output"]
        inputs = [image_view(row, public_url) for row in rows if row["role"] == "input"]
        return outputs, inputs[0] if inputs else None

    async def select_input(self, key: str) -> tuple[str, bytes]:
        row = await self.db.fetch_one(Q["select_input"], (key,))
        if row is None:
            raise NotFoundError("no such input")
        return row["content_type"], bytes(row["data"])

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
    ) -> Job:
        """Store what the provider said about a submit, and finish the submit task, atomically; a
        synchronous provider's final answer (`event`) is recorded and applied in the same transaction.

        A job cancelled while its submit was in flight gets a `cancel` task for the provider.
        """

        def write(conn: sqlite3.Connection) -> Job:
            try:
                conn.execute(
                    Q["record_submission"],
                    {
                        "id": job_id,
                        "request_id": request_id,
                        "urls": dumps(urls),
                        "error": dumps(error),
                        "next_poll_at": next_poll_at,
                        "poll_base_s": poll_base_s,
                        "now": now,
                    },
                )
            except sqlite3.IntegrityError as exc:  # the request id is bound to another job already
                raise ConflictError(f"request {request_id} already belongs to another job") from exc
            conn.execute(Q["complete_task"], {"id": task.id, "owner": owner, "now": now})
            if event is not None:
                apply_event(conn, event, now, Resubmit())
            job = get_job(conn, job_id)
            if job.status is JobStatus.CANCELLED and request_id:
                insert_task(conn, "cancel", job_id, now)
            return job

        job = await self.db.writer.run(write)
        self._on_task()
        return job

    async def apply_outcome(self, job_id: str, outcome: Outcome, *, now: float) -> bool:
        """Move a job without a provider event (submit refused, timeout); returns whether it moved."""

        def write(conn: sqlite3.Connection) -> bool:
            return move_job(conn, get_job(conn, job_id), outcome, now)

        moved = await self.db.writer.run(write)
        self._on_task()
        return moved

    async def cancel_job(self, job_id: str, *, now: float) -> Job:
        """Mark a job cancelled (final) and queue the provider-side cancel if it was submitted."""

        def write(conn: sqlite3.Connection) -> Job:
            job = get_job(conn, job_id)
            if job.status in TERMINAL_STATUSES:
                raise ConflictError(f"job {job_id} is already {job.status.value}", code="already_final")
            error = {"code": "cancelled", "message": "cancelled by the API caller"}
            move_job(conn, job, Outcome(JobStatus.CANCELLED, error=error), now)
            if job.provider_request_id:
                insert_task(conn, "cancel", job_id, now)
            return get_job(conn, job_id)

        job = await self.db.writer.run(write)
        self._on_task()
        return job

    async def count_jobs(self) -> dict[str, int]:
        return {row["status"]: row["n"] for row in await self.db.fetch_all(Q["count_jobs"])}

    async def count_tasks(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for row in await self.db.fetch_all(Q["count_tasks"]):
            counts.setdefault(row["kind"], {})[row["status"]] = row["n"]
        return counts
