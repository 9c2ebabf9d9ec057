"""The one provider interface, and the provider-neutral facts it hands to the rest of the receiver."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr

from receiver.errors import AmbiguousError, GiveUpError, NotFoundError, ReceiverError, RetryLaterError
from receiver.models import Job, Outcome
from receiver.observability import metrics
from receiver.providers import DEFAULT_IMAGE_FIELD
from receiver.support import jsontext
from receiver.tasks.retry import parse_retry_after

# Failures before the request left us: it never reached the provider, so sending it again is safe.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
CONNECT_TIMEOUT_S = 10.0

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


async def post_once(
    client: httpx.AsyncClient,
    url: str,
    *,
    provider: str,
    timeout_s: float,
    headers: dict[str, str],
    params: dict[str, str] | None = None,
    json_body: Any = None,
    data: dict[str, str] | None = None,
    files: dict[str, tuple[str, bytes, str]] | None = None,
) -> httpx.Response:
    """POST a paid request once. A failure to connect is RetryLaterError (nothing was sent); a failure
    after sending is AmbiguousError: the provider may have started (and billed) the work, so it is
    never resent blindly."""
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
    content = None
    if json_body is not None and jsontext.holds_big_string(json_body):
        # An input holding a data-URI image: httpx's `json=` would encode megabytes on the event loop.
        content = await asyncio.to_thread(jsontext.dumps, json_body, big=True)
        headers, json_body = {**headers, "Content-Type": "application/json"}, None
    try:
        return await client.post(
            url, headers=headers, params=params, content=content, json=json_body, data=data, files=files,
            timeout=timeout,
        )  # fmt: skip
    except NOT_SENT as exc:
        raise RetryLaterError(f"{provider} unreachable: {exc!r}", code="provider_unreachable") from exc
    except httpx.TransportError as exc:
        raise AmbiguousError(f"{provider} outcome unknown ({exc!r})") from exc


def authorization(key: SecretStr | None, *, scheme: str, variable: str) -> dict[str, str]:
    """The `Authorization` header carrying `key`; GiveUpError (provider_not_configured) naming the setting
    `variable` when there is no key."""
    if key is None:
        raise GiveUpError(f"{variable} is not set", code="provider_not_configured")
    return {"Authorization": f"{scheme} {key.get_secret_value()}"}


def submit_refusal(response: httpx.Response, message: str, *, provider: str, retryable: bool) -> ReceiverError:
    """The exception for a queue submit that was not accepted: a `retryable` answer (nothing was queued) comes
    back later, refused credentials or another 4xx fail the job, anything else (a 5xx) may follow a queued,
    billed job: never resent. `message` is the provider's own words."""
    status = response.status_code
    if retryable:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return RetryLaterError(f"{provider} answered {status}: {message}", retry_after_s=retry_after)
    if status in (401, 403):
        return GiveUpError(f"{provider} refused the credentials: {message}", code="provider_auth")
    if 400 <= status < 500:
        return GiveUpError(f"{provider} rejected the job ({status}): {message}", code="provider_rejected")
    return AmbiguousError(f"{provider} answered {status} to the submit: {message}")


@dataclass(frozen=True, slots=True)
class VerifiedWebhook:
    dedup_key: str
    request_id: str
    outcome: Outcome | None  # None: a verified event we do not act on (e.g. a non-final status)


@dataclass(frozen=True, slots=True)
class Submission:
    """What a submit returned. Asynchronous providers give the request id and their URLs; synchronous
    ones (StepFun, Modelverse) also give the final `outcome` and the raw response `body`; a queue that tells
    it (fal) gives the request's `queue_position`."""

    request_id: str | None
    urls: dict[str, str] = field(default_factory=dict)
    outcome: Outcome | None = None
    body: bytes = b""
    queue_position: int | None = None


@dataclass(frozen=True, slots=True)
class PollResult:
    """A poll's answer; `body` is the raw provider response when the job is finished; `queue_position` the
    request's place in the provider's queue while it waits there (fal's `IN_QUEUE`)."""

    outcome: Outcome
    body: bytes = b""
    queue_position: int | None = None


class Provider(abc.ABC):
    """One hosted image-edit API. The rest of the receiver never branches on provider names.

    Class facts: `name`, `models` (the model ids we validate), `accepts_any_model` (other model ids
    are passed through unchecked), `synchronous` (submit returns the final outcome; an ambiguous
    submit then fails the job, as no webhook or poll can settle it), `lost_submit_recoverable` (False: a
    lost submit answer fails the job as for a synchronous API), `url_input_fields` (input
    fields the provider must be able to fetch: a data URI there is served by us at an unguessable
    URL). Instance facts: `webhooks` (whether submits ask for a webhook), `first_poll_after_s` and
    `poll_interval_s` (when the reconciler first polls a quiet job, and the gap it then doubles),
    `concurrency` and `rate_per_min` (0 = unlimited; excess jobs wait in `pending`), and
    `max_provider_attempts` (fresh submits allowed after `resubmit` outcomes).
    """

    name: ClassVar[str]
    models: ClassVar[tuple[str, ...]]
    accepts_any_model: ClassVar[bool] = False
    synchronous: ClassVar[bool] = False  # submit() returns the final outcome (no webhook, no poll)
    # Whether a job whose submit answer was lost (so no request id) can still be settled by the provider: fal
    # retries its webhook, which names the request, for hours. When False the job fails at once instead.
    lost_submit_recoverable: ClassVar[bool] = True
    image_field: ClassVar[str] = DEFAULT_IMAGE_FIELD  # the input field holding the image to edit (IMAGE_FIELDS)
    # Hosts result images may be fetched from (docs/providers.md#result-hosts-and-lifetimes).
    result_hosts: ClassVar[tuple[str, ...]] = ()
    url_input_fields: ClassVar[tuple[str, ...]] = ()
    webhooks: bool = False
    first_poll_after_s: float = 60.0
    poll_interval_s: float = 10.0
    concurrency: int = 0
    rate_per_min: int = 0
    max_provider_attempts: int = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every provider's own submit, poll and cancel are counted and timed (`receiver_provider_requests_total`)."""
        super().__init_subclass__(**kwargs)
        for operation in ("submit", "poll", "cancel"):
            if operation in cls.__dict__:
                setattr(cls, operation, metrics.timed_provider_call(operation, cls.__dict__[operation]))

    @abc.abstractmethod
    def is_configured(self) -> bool:
        """Whether credentials are set, so jobs can be submitted."""

    @abc.abstractmethod
    def validate_input(self, model: str, data: Any) -> dict[str, Any]:
        """The provider-native input, checked; raises `InputError` naming the bad field (`input.x`)."""

    @abc.abstractmethod
    async def submit(self, job: Job, *, webhook_url: str | None) -> Submission:
        """Start the job (or, for a synchronous API, run it to the end).

        Raises RetryLaterError (not accepted, safe to retry), GiveUpError (fail the job with this
        message and code), AmbiguousError (may have reached the provider: never resent).
        """

    async def poll(self, job: Job) -> PollResult:
        """Ask the provider how the job is doing. Raises RetryLaterError or GiveUpError."""
        raise GiveUpError(f"{self.name} jobs cannot be polled", code="not_pollable")

    async def cancel(self, job: Job) -> None:  # noqa: B027 (a no-op default: not every provider can cancel)
        """Ask the provider to stop the job (a no-op where the provider has no cancel)."""

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes, *, now: float) -> VerifiedWebhook:
        """Verify a webhook over its raw body. Raises SignatureError, VerificationUnavailable, RejectError."""
        raise NotFoundError(f"{self.name} sends no webhooks")
