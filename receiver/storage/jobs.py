"""The jobs table (and its input images, idempotency keys and superseded requests): every query on them.

Functions taking a `Transaction` run inside a caller's transaction body; the `async` ones (`read*`,
`list*`) read through the `Database`. See `receiver.storage.base`.
"""

from __future__ import annotations

import json
from typing import Any

from receiver.errors import NotFoundError
from receiver.models import Job, JobState, JobStatus
from receiver.storage.base import Database, Row, Transaction
from receiver.support import jsontext

_compact_json = json.JSONEncoder(separators=(",", ":")).encode  # `json.dumps(...)` builds one per call


def _json(value: Any) -> str | None:
    return None if value is None else _compact_json(value)


def get(tx: Transaction, job_id: str) -> Job:
    """The job, or `NotFoundError`."""
    row = tx.one("select_job", id=job_id)
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    return Job.from_row(row)


def get_for_update(tx: Transaction, job_id: str) -> Job:
    """The job, read to decide a transition, or `NotFoundError`: on PostgreSQL its row stays locked until the
    commit, so no concurrent transaction moves it in between (SQLite's writer is exclusive already)."""
    row = tx.one("select_job_for_update", id=job_id)
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    return Job.from_row(row)


def get_state(tx: Transaction, job_id: str) -> JobState:
    """The job's state columns, or `NotFoundError`."""
    row = tx.one("select_job_state", id=job_id)
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    return JobState.from_row(row)


def insert(
    tx: Transaction,
    job_id: str,
    *,
    provider: str,
    model: str,
    input: dict[str, Any],
    metadata: dict[str, Any] | None,
    callback_url: str | None,
    now: float,
) -> None:
    """A new pending job; `UniqueViolation` if the id is taken."""
    tx.execute(
        "insert_job",
        id=job_id,
        provider=provider,
        model=model,
        # A data-URI image is megabytes: encoded a slice at a time (see `jsontext.dumps`).
        input=jsontext.dumps(input, big=jsontext.holds_big_string(input)).decode(),
        metadata=_json(metadata),
        callback_url=callback_url,
        now=now,
    )


def insert_input(tx: Transaction, key: str, *, job_id: str, content_type: str, data: bytes, now: float) -> None:
    """An input image we serve to the provider at `/inputs/{key}`."""
    tx.execute("insert_input", key=key, job_id=job_id, content_type=content_type, data=data, now=now)


def update_status(
    tx: Transaction,
    job_id: str,
    *,
    status: JobStatus,
    result: Any,
    provider_result: Any,
    error: Any,
    completed_at: float | None,
    now: float,
) -> None:
    """Set the status and error; `result`, `provider_result` and `completed_at` only when given. A success
    marks the job's images pending (their copy is queued with it). Queued (`Transaction.execute_later`): the
    webhook path runs it, and nothing reads its outcome."""
    tx.execute_later(
        "update_job_status",
        id=job_id,
        status=status.value,
        result=_json(result),
        provider_result=_json(provider_result),
        error=_json(error),
        completed_at=completed_at,
        now=now,
    )


def bind_request_id(tx: Transaction, job_id: str, request_id: str, *, now: float) -> None:
    """Give the job its provider request id, unless it has one already."""
    tx.execute_later("bind_request_id", id=job_id, request_id=request_id, now=now)


def record_submission(
    tx: Transaction,
    job_id: str,
    *,
    request_id: str | None,
    urls: dict[str, str] | None,
    error: Any,
    next_poll_at: float | None,
    poll_base_s: float,
    now: float,
) -> None:
    """What the provider answered to a submit (a pending job becomes submitted); `UniqueViolation` when the
    request id is bound to another job of the provider already."""
    tx.execute(
        "record_submission",
        id=job_id,
        request_id=request_id,
        urls=_json(urls),
        error=_json(error),
        next_poll_at=next_poll_at,
        poll_base_s=poll_base_s,
        now=now,
    )


def reset_for_resubmit(tx: Transaction, job_id: str, *, error: Any, now: float) -> None:
    """Forget the job's provider request, so that a fresh submit can start over."""
    tx.execute_later("reset_for_resubmit", id=job_id, error=_json(error), now=now)


def supersede_request(tx: Transaction, job_id: str, *, provider: str, request_id: str, now: float) -> None:
    """Remember that the job gave `request_id` up (once; a second call is a no-op)."""
    tx.execute_later("supersede_request", provider=provider, request_id=request_id, job_id=job_id, now=now)


def get_state_for_event(tx: Transaction, job_id: str, *, request_id: str | None) -> tuple[JobState, bool]:
    """The job's state columns, and whether the job gave `request_id` up (see `supersede_request`), in one
    statement (the ingest path runs it per webhook); `NotFoundError` when there is no such job."""
    row = tx.one("select_job_for_event", id=job_id, request_id=request_id)
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    return JobState.from_row(row), bool(row["superseded"])


def claim_dispatch(
    tx: Transaction, job_id: str, *, provider: str, concurrency: int, rate_per_min: int, synchronous: bool, now: float
) -> bool:
    """Take one of the provider's slots for the job (0 = no limit); False when the limits are reached or the
    job has a slot or a request already. A synchronous job counts as running from now on."""
    changed = tx.execute(
        "claim_dispatch",
        id=job_id,
        provider=provider,
        concurrency=concurrency,
        rate_per_min=rate_per_min,
        synchronous=synchronous,
        now=now,
    )
    return changed == 1


def release_dispatch(tx: Transaction, job_id: str, *, now: float) -> None:
    """Give the job's slot back (the provider refused the submit before accepting it)."""
    tx.execute("release_dispatch", id=job_id, now=now)


def due_polls(tx: Transaction, *, now: float, limit: int) -> list[Row]:
    """(id, poll_count, poll_base_s) of open jobs whose next poll is due, the most overdue first."""
    return tx.all("select_due_polls", now=now, limit=limit)


def schedule_next_poll(tx: Transaction, job_id: str, *, next_poll_at: float) -> None:
    """Count a poll and set when the next one is due."""
    tx.execute("schedule_next_poll", id=job_id, next_poll_at=next_poll_at)


def open_created_before(tx: Transaction, deadline: float) -> list[JobState]:
    """Every unfinished job created at or before `deadline`, oldest first."""
    return [JobState.from_row(row) for row in tx.all("select_open_jobs_created_before", deadline=deadline)]


# --- idempotency keys ---------------------------------------------------------------------------


def claim_idempotency_key(tx: Transaction, *, scope: str, key: str, fingerprint: str, job_id: str, now: float) -> bool:
    """Store the key for `job_id`; False (nothing written) when the key is held already."""
    changed = tx.execute("claim_idempotency_key", scope=scope, key=key, fingerprint=fingerprint, job_id=job_id, now=now)
    return changed == 1


def get_idempotency_key(tx: Transaction, *, scope: str, key: str) -> Row | None:
    """(scope, key, fingerprint, job_id, created_at) of a stored key, or None."""
    return tx.one("select_idempotency_key", scope=scope, key=key)


# --- reads --------------------------------------------------------------------------------------


async def read(db: Database, job_id: str) -> Job:
    """The job, or `NotFoundError`."""
    row = await db.one("select_job", id=job_id)
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    return Job.from_row(row)


async def list_page(
    db: Database, *, status: str | None, provider: str | None, cursor: str | None, limit: int
) -> list[Job]:
    """Up to `limit` jobs, newest first, older than the job id `cursor` when given; filters are optional."""
    rows = await db.all("list_jobs", status=status, provider=provider, cursor=cursor, limit=limit)
    return [Job.from_row(row) for row in rows]


async def read_input(db: Database, key: str) -> tuple[str, bytes]:
    """(content type, bytes) of an input image we serve, or `NotFoundError`."""
    row = await db.one("select_input", key=key)
    if row is None:
        raise NotFoundError("no such input")
    return row["content_type"], bytes(row["data"])


async def read_idempotency_key(db: Database, *, scope: str, key: str) -> Row | None:
    """(scope, key, fingerprint, job_id, created_at) of a stored key, or None."""
    return await db.one("select_idempotency_key", scope=scope, key=key)
