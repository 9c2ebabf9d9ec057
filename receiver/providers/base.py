"""The one provider interface, and the provider-neutral facts it hands to the rest of the receiver."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from receiver.models import Job, JobStatus

# Request headers never stored with an inbox event (credentials, cookies).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


def safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers worth keeping with a raw event: everything but credentials."""
    kept = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in SECRET_HEADERS or "secret" in lower or "token" in lower:
            continue
        kept[lower] = value
    return kept


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a provider event means for its job.

    `status` is where the job should go (RUNNING, SUCCEEDED, FAILED, CANCELLED). `fetch_result` means
    the job finished but its output has to be fetched from the provider first (fal's `payload_error`).
    """

    status: JobStatus
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    fetch_result: bool = False


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """A verified event, ready to be recorded: the raw body plus what it means."""

    provider: str
    kind: Literal["webhook", "poll"]
    dedup_key: str
    job_id: str
    request_id: str | None
    outcome: Outcome
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VerifiedWebhook:
    dedup_key: str
    request_id: str
    outcome: Outcome | None  # None: a verified event we do not act on (e.g. a non-final status)


@dataclass(frozen=True, slots=True)
class Submission:
    request_id: str
    urls: dict[str, str]


@dataclass(frozen=True, slots=True)
class PollResult:
    """A poll's answer; `body` is the raw provider response when the job is finished."""

    outcome: Outcome
    body: bytes = b""


class Provider(abc.ABC):
    """One hosted image-edit API. The rest of the receiver never branches on provider names."""

    name: ClassVar[str]
    models: ClassVar[tuple[str, ...]]
    webhooks: ClassVar[bool]

    @abc.abstractmethod
    def is_configured(self) -> bool:
        """Whether credentials are set, so jobs can be submitted."""

    @abc.abstractmethod
    def validate_input(self, model: str, data: Any) -> dict[str, Any]:
        """The provider-native input, checked; raises `InputError` naming the bad field."""

    @abc.abstractmethod
    async def submit(self, job: Job, *, webhook_url: str | None) -> Submission:
        """Start the job. Raises RetryLaterError (not accepted, safe to retry), GiveUpError, AmbiguousError."""

    @abc.abstractmethod
    async def poll(self, job: Job) -> PollResult:
        """Ask the provider how the job is doing. Raises RetryLaterError or GiveUpError."""

    @abc.abstractmethod
    async def cancel(self, job: Job) -> None:
        """Ask the provider to stop the job. Raises RetryLaterError when the ask should be repeated."""

    @abc.abstractmethod
    async def verify_webhook(self, headers: Mapping[str, str], body: bytes, *, now: float) -> VerifiedWebhook:
        """Verify a webhook over its raw body. Raises SignatureError, VerificationUnavailable, RejectError."""
