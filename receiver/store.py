"""The store: every read and write of jobs, inbox events and tasks, each write one transaction."""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Callable
from typing import Any

from receiver.db import Database, load_queries
from receiver.errors import ConflictError, NotFoundError
from receiver.models import TERMINAL_STATUSES, Job, JobStatus, Task, can_move
from receiver.providers.base import Outcome, ProviderEvent

Q = load_queries()


class Ingest(enum.StrEnum):
    """What recording a provider event did."""

    APPLIED = "applied"  # recorded, and the job moved
    RECORDED = "recorded"  # recorded, the job did not move (already further along or final)
    DUPLICATE = "duplicate"  # seen before; nothing changed


def dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def insert_task(
    conn: sqlite3.Connection, kind: str, job_id: str | None, now: float, *, payload: Any = None, delay_s: float = 0
) -> None:
    conn.execute(
        Q["insert_task"],
        {"kind": kind, "job_id": job_id, "payload": dumps(payload or {}), "run_at": now + delay_s, "now": now},
    )


def _job(conn: sqlite3.Connection, job_id: str) -> Job:
    row = conn.execute(Q["select_job"], (job_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    return Job.from_row(row)


def move_job(conn: sqlite3.Connection, job: Job, outcome: Outcome, now: float) -> bool:
    """Apply `outcome` if it is a step forward for `job`; returns whether the job moved."""
    if not can_move(job.status, outcome.status):
        return False
    conn.execute(
        Q["update_job_status"],
        {
            "id": job.id,
            "status": outcome.status.value,
            "result": dumps(outcome.result),
            "error": dumps(outcome.error),
            "completed_at": now if outcome.status in TERMINAL_STATUSES else None,
            "now": now,
        },
    )
    return True


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
        now: float,
    ) -> Job:
        """Insert a pending job and its `submit` task in one transaction."""

        def write(conn: sqlite3.Connection) -> Job:
            conn.execute(
                Q["insert_job"],
                {
                    "id": job_id,
                    "provider": provider,
                    "model": model,
                    "input": dumps(input),
                    "metadata": dumps(metadata),
                    "callback_url": callback_url,
                    "now": now,
                },
            )
            insert_task(conn, "submit", job_id, now)
            return _job(conn, job_id)

        job = await self.db.writer.run(write)
        self._on_task()
        return job

    async def select_job(self, job_id: str) -> Job:
        row = await self.db.fetch_one(Q["select_job"], (job_id,))
        if row is None:
            raise NotFoundError(f"job {job_id} not found")
        return Job.from_row(row)

    async def list_jobs(self, *, status: str | None, provider: str | None, cursor: str | None, limit: int) -> list[Job]:
        params = {"status": status, "provider": provider, "cursor": cursor, "limit": limit}
        return [Job.from_row(row) for row in await self.db.fetch_all(Q["list_jobs"], params)]

    async def list_inbox_for_job(self, job_id: str) -> list[dict[str, Any]]:
        rows = await self.db.fetch_all(Q["list_inbox_for_job"], (job_id,))
        return [dict(row) for row in rows]

    async def ingest(self, event: ProviderEvent, *, now: float) -> Ingest:
        """Record a verified provider event and apply it to its job, in one transaction.

        Raises NotFoundError when the job does not exist (or belongs to another provider) and
        ConflictError when the event's request id is not the job's; nothing is recorded then.
        """

        def write(conn: sqlite3.Connection) -> Ingest:
            job = _job(conn, event.job_id)
            if job.provider != event.provider:
                raise NotFoundError(f"job {event.job_id} not found")
            if event.request_id and job.provider_request_id and event.request_id != job.provider_request_id:
                raise ConflictError(
                    f"event is for request {event.request_id}, job {job.id} is request {job.provider_request_id}",
                    code="request_id_mismatch",
                )
            inserted = conn.execute(
                Q["insert_inbox"],
                {
                    "provider": event.provider,
                    "kind": event.kind,
                    "dedup_key": event.dedup_key,
                    "job_id": job.id,
                    "headers": dumps(event.headers),
                    "body": event.body,
                    "outcome": event.outcome.status.value,
                    "now": now,
                },
            ).rowcount
            if not inserted:
                return Ingest.DUPLICATE
            if event.request_id and job.provider_request_id is None:
                # The webhook beat the submit response: the signed request id binds the job now.
                conn.execute(Q["bind_request_id"], {"id": job.id, "request_id": event.request_id, "now": now})
            if event.outcome.fetch_result and job.status not in TERMINAL_STATUSES:
                insert_task(conn, "poll", job.id, now)
                move_job(conn, job, Outcome(JobStatus.RUNNING), now)
                return Ingest.APPLIED
            return Ingest.APPLIED if move_job(conn, job, event.outcome, now) else Ingest.RECORDED

        result = await self.db.writer.run(write)
        if event.outcome.fetch_result:
            self._on_task()
        return result

    async def record_submission(
        self,
        job_id: str,
        *,
        request_id: str | None,
        urls: dict[str, str] | None,
        error: dict[str, Any] | None,
        next_poll_at: float | None,
        task: Task,
        owner: str,
        now: float,
    ) -> Job:
        """Store what the provider said about a submit, and finish the submit task, atomically.

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
                        "now": now,
                    },
                )
            except sqlite3.IntegrityError as exc:  # the request id is bound to another job already
                raise ConflictError(f"request {request_id} already belongs to another job") from exc
            conn.execute(Q["complete_task"], {"id": task.id, "owner": owner, "now": now})
            job = _job(conn, job_id)
            if job.status is JobStatus.CANCELLED and request_id:
                insert_task(conn, "cancel", job_id, now)
            return job

        job = await self.db.writer.run(write)
        if job.status is JobStatus.CANCELLED:
            self._on_task()
        return job

    async def apply_outcome(self, job_id: str, outcome: Outcome, *, now: float) -> bool:
        """Move a job without a provider event (submit refused, timeout); returns whether it moved."""

        def write(conn: sqlite3.Connection) -> bool:
            return move_job(conn, _job(conn, job_id), outcome, now)

        return await self.db.writer.run(write)

    async def cancel_job(self, job_id: str, *, now: float) -> Job:
        """Mark a job cancelled (final) and queue the provider-side cancel if it was submitted."""

        def write(conn: sqlite3.Connection) -> Job:
            job = _job(conn, job_id)
            if job.status in TERMINAL_STATUSES:
                raise ConflictError(f"job {job_id} is already {job.status.value}", code="already_final")
            error = {"code": "cancelled", "message": "cancelled by the API caller"}
            move_job(conn, job, Outcome(JobStatus.CANCELLED, error=error), now)
            if job.provider_request_id:
                insert_task(conn, "cancel", job_id, now)
            return _job(conn, job_id)

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
