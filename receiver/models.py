"""Domain records: job and task states, and frozen models built from database rows."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict


class RowLike(Protocol):
    """A row by column name: a storage row (a plain mapping) or a driver's row."""

    def __getitem__(self, key: str, /) -> Any: ...


CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class JobStatus(StrEnum):
    PENDING = "pending"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# Position in the state machine; a job only ever moves to a higher rank, and never out of a terminal one.
STATUS_RANK = {
    JobStatus.PENDING: 0,
    JobStatus.SUBMITTED: 1,
    JobStatus.RUNNING: 2,
    JobStatus.SUCCEEDED: 3,
    JobStatus.FAILED: 3,
    JobStatus.CANCELLED: 3,
}


def can_move(current: JobStatus, new: JobStatus) -> bool:
    """True when `current -> new` is a step forward in the monotonic state machine."""
    return current not in TERMINAL_STATUSES and STATUS_RANK[new] > STATUS_RANK[current]


class TaskStatus(StrEnum):
    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    DEAD = "dead"


class IdFactory:
    """Time-ordered ids (ULID layout: 48-bit ms time + 80 random bits, Crockford base32).

    Ids made in the same millisecond increase too (ULID's monotonic rule), so sorting by id is
    creation order and cursor pagination never skips or repeats.
    """

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_random = 0

    def new(self, prefix: str, now: float | None = None) -> str:
        ms = int((time.time() if now is None else now) * 1000)
        if ms <= self._last_ms:
            ms, random_part = self._last_ms, self._last_random + 1
        else:
            random_part = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for increments
        self._last_ms, self._last_random = ms, random_part
        return f"{prefix}_{encode_ulid((ms << 80) | random_part)}"


def encode_ulid(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def to_datetime(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC)


def _json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


class Job(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    provider: str
    model: str
    status: JobStatus
    input: dict[str, Any]
    metadata: dict[str, Any] | None
    callback_url: str | None
    provider_request_id: str | None
    provider_urls: dict[str, str] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    submitted_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    poll_count: int
    next_poll_at: datetime | None
    provider_result: Any = None
    dispatched_at: datetime | None = None
    provider_attempts: int = 0
    images_status: str | None = None
    images_error: str | None = None

    @classmethod
    def from_row(cls, row: RowLike) -> Job:
        return cls(
            id=row["id"],
            provider=row["provider"],
            model=row["model"],
            status=JobStatus(row["status"]),
            input=json.loads(row["input"]),
            metadata=_json(row["metadata"]),
            callback_url=row["callback_url"],
            provider_request_id=row["provider_request_id"],
            provider_urls=_json(row["provider_urls"]),
            result=_json(row["result"]),
            error=_json(row["error"]),
            created_at=to_datetime(row["created_at"]),
            submitted_at=to_datetime(row["submitted_at"]),
            completed_at=to_datetime(row["completed_at"]),
            updated_at=to_datetime(row["updated_at"]),
            poll_count=row["poll_count"],
            next_poll_at=to_datetime(row["next_poll_at"]),
            provider_result=_json(row["provider_result"]),
            dispatched_at=to_datetime(row["dispatched_at"]),
            provider_attempts=row["provider_attempts"],
            images_status=row["images_status"],
            images_error=row["images_error"],
        )

    def to_api(self) -> dict[str, Any]:
        """The job as `/v1/jobs` shows it (no internal bookkeeping)."""
        timings = None
        if self.submitted_at and self.completed_at:
            timings = {"total_s": round((self.completed_at - self.created_at).total_seconds(), 3)}
        return {
            "id": self.id,
            "provider": self.provider,
            "model": self.model,
            "status": self.status.value,
            "provider_request_id": self.provider_request_id,
            "input": self.input,
            "metadata": self.metadata,
            "callback_url": self.callback_url,
            "result": self.result,
            "provider_result": self.provider_result,
            "error": self.error,
            "images_status": self.images_status,
            "images_error": self.images_error,
            "timings": timings,
            "created_at": self.created_at.isoformat(),
            "submitted_at": self.submitted_at.isoformat() if self.submitted_at else None,
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class JobState:
    """The few columns the ingest path needs (cheaper than a whole `Job`: this is read per webhook)."""

    id: str
    provider: str
    status: JobStatus
    provider_request_id: str | None
    provider_attempts: int

    @classmethod
    def from_row(cls, row: RowLike) -> JobState:
        return cls(
            row["id"], row["provider"], JobStatus(row["status"]), row["provider_request_id"], row["provider_attempts"]
        )


class Task(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    kind: str
    job_id: str | None
    payload: dict[str, Any]
    status: TaskStatus
    attempts: int
    run_at: float
    lease_owner: str | None
    lease_expires_at: float | None
    last_error: str | None
    interrupted: bool

    @classmethod
    def from_row(cls, row: RowLike) -> Task:
        return cls(
            id=row["id"],
            kind=row["kind"],
            job_id=row["job_id"],
            payload=json.loads(row["payload"]),
            status=TaskStatus(row["status"]),
            attempts=row["attempts"],
            run_at=row["run_at"],
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
            last_error=row["last_error"],
            interrupted=bool(row["interrupted"]),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a provider event means for its job.

    `status` is where the job should go (SUBMITTED, RUNNING, SUCCEEDED, FAILED, CANCELLED).
    `result` is the normalized result (see `receiver.results`), `provider_result` the provider's raw
    output, `error` is `{"code", "message", ...}` for a failure. `fetch_result` means the job finished
    but its output, or what its failure means, has to be fetched from the provider first (fal's
    `payload_error`; a WaveSpeed failure webhook, which carries no error code): a poll settles it.
    `resubmit` means the provider gave up on this attempt for a transient reason (WaveSpeed 5xxx):
    submit the job anew after a backoff, while the budget lasts.
    `stop_provider` means we end the job while the provider may still be working on it (a cancel, a
    timeout): once it is final, a `cancel` task asks the provider to stop, if it has the request.
    """

    status: JobStatus
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    fetch_result: bool = False
    provider_result: Any = None
    resubmit: bool = False
    stop_provider: bool = False


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """A verified event, ready to be recorded: the raw body plus what it means."""

    provider: str
    kind: Literal["webhook", "poll", "response"]
    dedup_key: str
    job_id: str
    request_id: str | None
    outcome: Outcome
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
