"""WaveSpeed: the v3 prediction API (submit, poll) and its HMAC-signed webhooks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from receiver.errors import (
    AmbiguousError,
    GiveUpError,
    InputError,
    RejectError,
    RetryLaterError,
    SignatureError,
    VerificationUnavailable,
)
from receiver.ingest.bodies import UnusableSignedBody, off_loop, parse_signed, read_member
from receiver.ingest.signatures import verify_wavespeed
from receiver.models import Job, JobStatus, Outcome
from receiver.providers.base import (
    PollResult,
    Provider,
    Submission,
    VerifiedWebhook,
    authorization,
    post_once,
    submit_refusal,
)
from receiver.results import normalized, url_image
from receiver.support.jsontext import UnrepresentableJSONError, finite_float
from receiver.tasks.retry import parse_retry_after
from receiver.validation import ImageUrl, Prompt, describe_validation_error

STATUSES = {"created": JobStatus.SUBMITTED, "processing": JobStatus.RUNNING}
# `failed` is documented; the Python SDK also ends on `timeout`
# (docs/providers.md#wavespeed-polling-statuses-and-errors). Their `data.code` decides.
FAILED_STATUSES = frozenset({"failed", "timeout"})
# Only a 429 documents "nothing was created". A 503 (like any 5xx) may follow a created, billed prediction.
RETRYABLE_SUBMIT = frozenset({429})
MAX_SEED = 2_147_483_647  # the v3 page's range (docs/providers.md#wavespeed-submit)


class Step1xEditInput(BaseModel):
    """wavespeed-ai/step1x-edit, as documented (unknown fields refused)."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    image: ImageUrl
    negative_prompt: str = ""
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    guidance_scale: float = Field(4.0, ge=0, le=20)
    num_inference_steps: int = Field(30, ge=1, le=50)
    enable_safety_checker: bool = True


def prediction_outcome(data: Mapping[str, Any]) -> Outcome | None:
    """What a polled WaveSpeed prediction (the `data` of an envelope) means for its job; None for a status
    we do not know (it is asked again later, never taken as a failure)."""
    status = data.get("status")
    if not isinstance(status, str):
        return None
    if status in STATUSES:
        return Outcome(STATUSES[status])
    if status == "completed":
        outputs = [
            url_image(url, source=f"outputs[{index}]")
            for index, url in enumerate(data.get("outputs") or [])
            if isinstance(url, str)
        ]
        timings = data.get("timings") if isinstance(data.get("timings"), dict) else {}
        inference_ms = finite_float(timings.get("inference")) if timings else None
        result = normalized(
            outputs,
            seed=(data.get("input") or {}).get("seed") if isinstance(data.get("input"), dict) else None,
            nsfw=data.get("has_nsfw_contents"),
            timings={"inference_s": inference_ms / 1000} if inference_ms is not None else None,
        )
        return Outcome(JobStatus.SUCCEEDED, result=result, provider_result=dict(data))
    if status != "cancelled" and status not in FAILED_STATUSES:
        return None
    code = data.get("code")
    message = str(data.get("error") or f"WaveSpeed prediction {status}")
    error: dict[str, Any] = {"code": f"wavespeed_{code}" if code else f"wavespeed_{status}", "message": message}
    if status == "cancelled":
        return Outcome(JobStatus.CANCELLED, error=error, provider_result=dict(data))
    # 5xxx: WaveSpeed's side failed (internal, unavailable, timeout): a fresh prediction may work.
    transient = isinstance(code, int) and 5000 <= code < 6000
    return Outcome(JobStatus.FAILED, error=error, provider_result=dict(data), resubmit=transient)


def webhook_outcome(data: Mapping[str, Any]) -> Outcome | None:
    """What a webhook body (the prediction, without `code`: docs/providers.md#wavespeed-webhooks) means. A
    failure is not settled here: whether it is transient is in the polled prediction's `code`, so the job is
    polled at once and `prediction_outcome` decides, as it does for a failure first seen by a poll."""
    if isinstance(data.get("status"), str) and data["status"] in FAILED_STATUSES:
        error = {"code": "wavespeed_failed", "message": str(data.get("error") or "WaveSpeed prediction failed")}
        return Outcome(JobStatus.FAILED, error=error, fetch_result=True)
    return prediction_outcome(data)


def envelope_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or f"HTTP {response.status_code}"
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return json.dumps(body)[:300]


class WaveSpeedProvider(Provider):
    name: ClassVar[str] = "wavespeed"
    models: ClassVar[tuple[str, ...]] = ("wavespeed-ai/step1x-edit",)
    accepts_any_model: ClassVar[bool] = True
    # No documented way to find a prediction without its id (no list or history endpoint,
    # docs/providers.md#wavespeed-polling-statuses-and-errors), and one webhook POST with no documented retries:
    # a lost submit answer fails the job at once.
    lost_submit_recoverable: ClassVar[bool] = False
    url_input_fields: ClassVar[tuple[str, ...]] = ("image",)
    result_hosts: ClassVar[tuple[str, ...]] = (
        "d1q70pf5vjeyhc.cloudfront.net",
        "d2p7pge43lyniu.cloudfront.net",
        "d2g64w682n9w0w.cloudfront.net",
        "*.wavespeed.ai",
    )

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        key: SecretStr | None,
        webhook_secret: SecretStr | None,
        webhooks: bool = True,
        timeout_s: float = 30.0,
        tolerance_s: int = 300,
        clock: Callable[[], float],
        first_poll_after_s: float = 3.0,
        poll_interval_s: float = 3.0,
        concurrency: int = 2,
        rate_per_min: int = 0,
        max_attempts: int = 3,
        secret_refetch_interval_s: float = 30.0,
    ) -> None:
        self.client = client
        self.base_url = base_url
        self._key = key
        self._configured_secret = webhook_secret
        self._fetched_secret: str | None = None
        self._secret_fetched_at: float | None = None
        self._secret_lock = asyncio.Lock()
        self.secret_refetch_interval_s = secret_refetch_interval_s
        self.webhooks = webhooks
        self.timeout_s = timeout_s
        self.tolerance_s = tolerance_s
        self.clock = clock
        self.first_poll_after_s = first_poll_after_s
        self.poll_interval_s = poll_interval_s
        self.concurrency = concurrency
        self.rate_per_min = rate_per_min
        self.max_provider_attempts = max_attempts

    def is_configured(self) -> bool:
        return self._key is not None

    def validate_input(self, model: str, data: Any) -> dict[str, Any]:
        if model in self.models:
            try:
                Step1xEditInput.model_validate(data)
            except ValidationError as exc:
                raise InputError(describe_validation_error(exc, prefix="input")) from None
        elif not isinstance(data, dict):
            raise InputError("input: must be a JSON object")
        return dict(data)

    def _headers(self) -> dict[str, str]:
        return authorization(self._key, scheme="Bearer", variable="WAVESPEED_API_KEY")

    async def submit(self, job: Job, *, webhook_url: str | None) -> Submission:
        params = {"webhook": webhook_url} if webhook_url else {}
        response = await post_once(
            self.client,
            f"{self.base_url}/api/v3/{job.model}",
            provider="WaveSpeed",
            timeout_s=self.timeout_s,
            headers=self._headers(),
            params=params,
            json_body=job.input,
        )
        status = response.status_code
        if status == 200:
            try:
                data = response.json()["data"]
                prediction_id = str(data["id"])
            except (ValueError, KeyError, TypeError) as exc:
                raise AmbiguousError(f"WaveSpeed answered 200 without a prediction id: {exc!r}") from exc
            urls = {"get": data["urls"]["get"]} if isinstance((data.get("urls") or {}).get("get"), str) else {}
            return Submission(request_id=prediction_id, urls=urls)
        retryable = status in RETRYABLE_SUBMIT
        raise submit_refusal(response, envelope_message(response), provider="WaveSpeed", retryable=retryable)

    async def poll(self, job: Job) -> PollResult:
        url = (job.provider_urls or {}).get("get")
        url = url or f"{self.base_url}/api/v3/predictions/{job.provider_request_id}/result"
        try:
            response = await self.client.get(url, headers=self._headers(), timeout=self.timeout_s)
        except httpx.TransportError as exc:
            raise RetryLaterError(f"WaveSpeed unreachable: {exc!r}", code="provider_unreachable") from exc
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise RetryLaterError(f"WaveSpeed answered {response.status_code}", retry_after_s=retry_after)
        if response.status_code == 404:
            raise GiveUpError(
                f"WaveSpeed does not know prediction {job.provider_request_id}", code="provider_not_found"
            )
        try:
            data = response.json()["data"]
            outcome = prediction_outcome(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RetryLaterError(f"WaveSpeed poll answer is unreadable ({response.status_code})") from exc
        if outcome is None:
            message = f"WaveSpeed prediction has unknown status {str(data.get('status'))[:50]!r}; asked again later"
            raise RetryLaterError(message, code="provider_unknown_status")
        return PollResult(outcome, body=json.dumps(data).encode())

    async def _secret(self, *, refresh: bool = False) -> str:
        if self._configured_secret is not None:
            return self._configured_secret.get_secret_value()
        async with self._secret_lock:
            now = self.clock()
            recently = (
                self._secret_fetched_at is not None and now - self._secret_fetched_at < self.secret_refetch_interval_s
            )
            if self._fetched_secret is None or (refresh and not recently):
                self._secret_fetched_at = now
                try:
                    response = await self.client.get(
                        f"{self.base_url}/api/v3/webhook/secret", headers=self._headers(), timeout=self.timeout_s
                    )
                    response.raise_for_status()
                    self._fetched_secret = str(response.json()["data"]["secret"])
                except (httpx.HTTPError, ValueError, KeyError, TypeError, GiveUpError):
                    if self._fetched_secret is None:
                        raise VerificationUnavailable("the WaveSpeed webhook secret could not be fetched") from None
            return self._fetched_secret

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes, *, now: float) -> VerifiedWebhook:
        secret = await self._secret()
        try:
            await off_loop(body, verify_wavespeed, secret, headers, body, now=now, tolerance_s=self.tolerance_s)
        except SignatureError as exc:
            # A fetched secret may have been rotated: fetch it again (rate-limited) and retry once.
            if exc.code != "invalid_signature" or self._configured_secret is not None:
                raise
            fresh = await self._secret(refresh=True)
            if fresh == secret:
                raise
            await off_loop(body, verify_wavespeed, fresh, headers, body, now=now, tolerance_s=self.tolerance_s)
        try:
            data = await parse_signed(body)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            prediction_id = str(data["id"])
        except UnrepresentableJSONError as exc:
            # The signature binds the body, and so its prediction `id`: read it leniently to bind the event.
            lenient_id = await off_loop(body, read_member, body, "id")
            if lenient_id is None:
                raise RejectError("webhook body is not a WaveSpeed prediction", code="malformed_body") from None
            raise UnusableSignedBody(exc, request_id=lenient_id) from None
        except (ValueError, KeyError, TypeError, RecursionError):
            raise RejectError("webhook body is not a WaveSpeed prediction", code="malformed_body") from None
        outcome = await off_loop(body, webhook_outcome, data)  # decodes inline (data URI) images
        final = outcome is not None and outcome.status not in (JobStatus.SUBMITTED, JobStatus.RUNNING)
        return VerifiedWebhook(dedup_key=prediction_id, request_id=prediction_id, outcome=outcome if final else None)
