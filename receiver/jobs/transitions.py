"""Transaction bodies that move jobs: each runs inside one writer transaction (see `receiver.storage.sqlite`)."""

from __future__ import annotations

import enum
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from receiver.errors import ConflictError, NotFoundError
from receiver.models import TERMINAL_STATUSES, Job, JobStatus, Outcome, ProviderEvent, can_move
from receiver.storage.sqlite import Q


class Ingest(enum.StrEnum):
    """What recording a provider event did."""

    APPLIED = "applied"  # recorded, and the job moved (or a follow-up was queued)
    RECORDED = "recorded"  # recorded, the job did not move (already further along or final)
    DUPLICATE = "duplicate"  # seen before; nothing changed


@dataclass(frozen=True, slots=True)
class Resubmit:
    """How often a job may be submitted afresh after `resubmit` outcomes, and the wait before each."""

    max_attempts: int = 1
    delay_s: float = 5.0


def dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def insert_task(
    conn: sqlite3.Connection,
    kind: str,
    job_id: str | None,
    now: float,
    *,
    payload: Any = None,
    delay_s: float = 0,
    lane: str | None = None,
) -> None:
    """Queue a task; a second live task of the same kind for the same job is a no-op. Its lane (see
    `receiver.tasks.lanes`) is `lane`, else the job's provider."""
    conn.execute(
        Q["insert_task"],
        {
            "kind": kind,
            "job_id": job_id,
            "payload": dumps(payload or {}),
            "run_at": now + delay_s,
            "lane": lane,
            "now": now,
        },
    )


def get_job(conn: sqlite3.Connection, job_id: str) -> Job:
    row = conn.execute(Q["select_job"], {"id": job_id}).fetchone()
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    return Job.from_row(row)


@dataclass(frozen=True, slots=True)
class JobState:
    """The few columns the ingest path needs (cheaper than a whole `Job`: this runs per webhook)."""

    id: str
    provider: str
    status: JobStatus
    provider_request_id: str | None
    provider_attempts: int


def get_job_state(conn: sqlite3.Connection, job_id: str) -> JobState:
    row = conn.execute(Q["select_job_state"], (job_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    return JobState(row[0], row[1], JobStatus(row[2]), row[3], row[4])


def is_superseded(conn: sqlite3.Connection, job: JobState, request_id: str) -> bool:
    """Whether `job` gave `request_id` up for a fresh submit (see `apply_event`)."""
    params = {"provider": job.provider, "request_id": request_id, "job_id": job.id}
    return conn.execute(Q["is_superseded"], params).fetchone() is not None


def move_job(conn: sqlite3.Connection, job: Job | JobState, outcome: Outcome, now: float) -> bool:
    """Apply `outcome` if it is a step forward for `job`; returns whether the job moved."""
    if not can_move(job.status, outcome.status):
        return False
    conn.execute(
        Q["update_job_status"],
        {
            "id": job.id,
            "status": outcome.status.value,
            "result": dumps(outcome.result),
            "provider_result": dumps(outcome.provider_result),
            "error": dumps(outcome.error),
            "completed_at": now if outcome.status in TERMINAL_STATUSES else None,
            "now": now,
        },
    )
    # What follows a final state, queued in this same transaction so it cannot be lost: a success
    # first copies its images into our store (then notifies; `update_job_status` marks its images
    # pending), any other end notifies at once.
    if outcome.status is JobStatus.SUCCEEDED:
        insert_task(conn, "fetch_images", job.id, now)
    elif outcome.status in TERMINAL_STATUSES:
        insert_task(conn, "notify", job.id, now, payload={"event": f"job.{outcome.status.value}"})
    return True


def apply_event(conn: sqlite3.Connection, event: ProviderEvent, now: float, resubmit: Resubmit) -> Ingest:
    """Record a verified provider event in the inbox and apply it to its job.

    Raises NotFoundError when the job does not exist (or is another provider's) and ConflictError when
    the event's request id is not the job's; nothing is recorded then.
    """
    job = get_job_state(conn, event.job_id)
    if job.provider != event.provider:
        raise NotFoundError(f"job {event.job_id} not found")
    # A request the job gave up on for a fresh submit: its late answer is kept, but the job follows the
    # fresh request (paid for too), so this one may neither bind nor move it.
    superseded = event.request_id is not None and is_superseded(conn, job, event.request_id)
    if event.request_id and job.provider_request_id and event.request_id != job.provider_request_id and not superseded:
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
    outcome = event.outcome
    if job.status in TERMINAL_STATUSES or superseded:
        return Ingest.RECORDED
    if outcome.resubmit:
        if job.provider_attempts < resubmit.max_attempts:
            for request_id in {event.request_id, job.provider_request_id} - {None}:
                conn.execute(
                    Q["supersede_request"],
                    {"provider": job.provider, "request_id": request_id, "job_id": job.id, "now": now},
                )
            conn.execute(Q["reset_for_resubmit"], {"id": job.id, "error": dumps(outcome.error), "now": now})
            insert_task(conn, "submit", job.id, now, delay_s=resubmit.delay_s * 2 ** max(job.provider_attempts - 1, 0))
            return Ingest.APPLIED
        error = dict(outcome.error or {})
        error["message"] = f"{error.get('message', 'provider error')} (after {job.provider_attempts} attempts)"
        outcome = Outcome(JobStatus.FAILED, error=error, provider_result=outcome.provider_result)
    if event.request_id and job.provider_request_id is None:
        # The webhook beat the submit response: the signed request id binds the job now.
        conn.execute(Q["bind_request_id"], {"id": job.id, "request_id": event.request_id, "now": now})
    if outcome.fetch_result:
        insert_task(conn, "poll", job.id, now)
        move_job(conn, job, Outcome(JobStatus.RUNNING), now)
        return Ingest.APPLIED
    return Ingest.APPLIED if move_job(conn, job, outcome, now) else Ingest.RECORDED
