"""Signed completion webhooks with retries, as fal and WaveSpeed send them: the job's delivery state and attempts,
the retry schedule, and the sender whose signing, body and schedule each provider supplies."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import httpx


class DeliveryState(StrEnum):
    NOT_REQUESTED = "not_requested"  # no webhook URL on the submit
    PENDING = "pending"
    SUPPRESSED = "suppressed"  # the no_delivery fault
    DELIVERED = "delivered"
    GAVE_UP = "gave_up"


DELIVERY_DONE = frozenset(
    {DeliveryState.NOT_REQUESTED, DeliveryState.SUPPRESSED, DeliveryState.DELIVERED, DeliveryState.GAVE_UP}
)


class JobConfig(Protocol):
    """The settings and faults of a job's run and its webhook (a copy taken at submit)."""

    @property
    def queue_s(self) -> float: ...
    @property
    def inference_s(self) -> float: ...
    @property
    def time_scale(self) -> float: ...
    @property
    def no_delivery(self) -> bool: ...
    @property
    def duplicate_delivery(self) -> bool: ...
    @property
    def late_delivery_s(self) -> float: ...
    @property
    def bad_signature(self) -> bool: ...
    @property
    def max_attempts(self) -> int: ...


ConfigT = TypeVar("ConfigT", bound=JobConfig)


@dataclass(slots=True)
class DeliveryAttempt:
    delivery: int  # 1, or 2 for the duplicate_delivery copy
    attempt: int
    at: float
    timestamp: int
    status_code: int | None = None
    error: str | None = None
    webhook_id: str | None = None  # WaveSpeed's event id, the same on every retry of one delivery

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"delivery": self.delivery, "attempt": self.attempt}
        if self.webhook_id is not None:
            data["webhook_id"] = self.webhook_id
        data.update(at=self.at, timestamp=self.timestamp, status_code=self.status_code, error=self.error)
        return data


@dataclass(slots=True, kw_only=True)
class WebhookJob(Generic[ConfigT]):
    """What every emulated job has: its config copy, where its webhook goes, when it ran, how delivery went."""

    config: ConfigT
    webhook_url: str | None
    base_url: str  # scheme://host:port/prefix as the submitter saw it
    started_at: float | None = None
    completed_at: float | None = None
    delivery_state: DeliveryState = DeliveryState.PENDING
    deliveries: list[DeliveryAttempt] = field(default_factory=list)
    # Set once the outcome is known (or never will be: shutdown).
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # Set after the first webhook attempt, or when none will be made.
    first_attempt_done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


JobT = TypeVar("JobT", bound=WebhookJob[Any])


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Delays between webhook tries: `first_delay_s`, doubling, capped at `max_delay_s`."""

    first_delay_s: float
    max_delay_s: float

    def delay_s(self, attempts_made: int, *, max_attempts: int, time_scale: float = 1.0) -> float | None:
        """Seconds to wait after `attempts_made` failed tries, or None to give up."""
        if attempts_made >= max_attempts:
            return None
        exponent = min(max(attempts_made - 1, 0), 16)
        delay_s: float = min(self.first_delay_s * 2.0**exponent, self.max_delay_s)
        return delay_s * time_scale


class WebhookSender(abc.ABC, Generic[JobT]):
    """Sends one job's webhook with the provider's retry schedule, recording every attempt on the job.

    A provider supplies the body, the signed headers and an event id, its schedule and attempt timeout.
    """

    schedule: ClassVar[RetrySchedule]
    attempt_timeout_s: ClassVar[float]

    def __init__(self, *, client: Callable[[], httpx.AsyncClient], clock: Callable[[], float]) -> None:
        self._client = client
        self._clock = clock

    @abc.abstractmethod
    def body(self, job: JobT) -> bytes:
        """The exact bytes POSTed, the same on every try and copy."""

    @abc.abstractmethod
    def sign(self, job: JobT, body: bytes, *, event_id: str | None, timestamp: int) -> dict[str, str]:
        """The signature headers of one try (with a key the receiver does not know under bad_signature)."""

    def new_event_id(self) -> str | None:
        """An id one delivery keeps across its retries; None where the provider sends none."""
        return None

    async def deliver(self, job: JobT) -> None:
        """Deliver the finished job (and again, as a second event, under duplicate_delivery)."""
        config = job.config
        if job.webhook_url is None:
            job.delivery_state = DeliveryState.NOT_REQUESTED
            return
        if config.no_delivery:
            job.delivery_state = DeliveryState.SUPPRESSED
            return
        if config.late_delivery_s > 0:
            await asyncio.sleep(config.late_delivery_s)
        body = self.body(job)
        copies = 2 if config.duplicate_delivery else 1
        for delivery in range(1, copies + 1):
            delivered = await self._deliver_event(job, body, delivery=delivery)
            job.delivery_state = DeliveryState.DELIVERED if delivered else DeliveryState.GAVE_UP
            if not delivered:
                return

    async def _deliver_event(self, job: JobT, body: bytes, *, delivery: int) -> bool:
        config = job.config
        event_id = self.new_event_id()
        attempt = 0
        while True:
            attempt += 1
            ok = await self._attempt(job, body, event_id=event_id, delivery=delivery, attempt=attempt)
            job.first_attempt_done.set()
            if ok:
                return True
            delay_s = self.schedule.delay_s(attempt, max_attempts=config.max_attempts, time_scale=config.time_scale)
            if delay_s is None:
                return False
            await asyncio.sleep(delay_s)

    async def _attempt(self, job: JobT, body: bytes, *, event_id: str | None, delivery: int, attempt: int) -> bool:
        assert job.webhook_url is not None  # checked by deliver()
        now = self._clock()
        # Signed afresh on every try, so a late retry still carries a timestamp inside the receiver's window.
        headers = self.sign(job, body, event_id=event_id, timestamp=int(now))
        headers["Content-Type"] = "application/json"
        record = DeliveryAttempt(delivery=delivery, attempt=attempt, at=now, timestamp=int(now), webhook_id=event_id)
        try:
            response = await self._client().post(
                job.webhook_url,
                content=body,
                headers=headers,
                timeout=self.attempt_timeout_s,
                follow_redirects=False,  # both providers count a 3xx as a failed attempt, never followed
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            record.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        else:
            record.status_code = response.status_code
        job.deliveries.append(record)
        return record.ok
