"""fal: the queue API client (submit, status, result, cancel) and its Ed25519/JWKS webhook verification."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr

from receiver.errors import (
    AmbiguousError,
    GiveUpError,
    RejectError,
    RetryLaterError,
    SignatureError,
)
from receiver.ingest.bodies import UnusableSignedBody, off_loop, parse_signed
from receiver.ingest.jwks import JwksCache
from receiver.ingest.signatures import fal_message, parse_fal_headers
from receiver.ingest.verifier import ThreadedVerifier
from receiver.models import Job, JobStatus, Outcome
from receiver.providers import IMAGE_FIELDS
from receiver.providers.base import (
    PollResult,
    Provider,
    Submission,
    VerifiedWebhook,
    authorization,
    post_once,
    submit_refusal,
)
from receiver.providers.fal_inputs import FAL_MODELS, validate_fal_input
from receiver.results import normalized, url_image
from receiver.support.jsontext import UnrepresentableJSONError, finite_float
from receiver.tasks.retry import parse_retry_after

# Errors fal answers before accepting a request: safe to send again (fal's own client retries these).
RETRYABLE_SUBMIT = frozenset({408, 409, 429})
# Gateway errors fal's client resends only when its ingress (nginx) answered: the request never reached fal.
INGRESS_ERRORS = frozenset({502, 503, 504})
NAMESPACES = frozenset({"workflows", "comfy"})
URL_KEYS = ("status_url", "response_url", "cancel_url")


def app_base(queue_url: str, model: str) -> str:
    """`{queue}/[namespace/]owner/app`: status, result and cancel live under this, never the sub-path."""
    parts = model.split("/")
    if parts[0] in NAMESPACES and len(parts) >= 3:
        return f"{queue_url}/{'/'.join(parts[:3])}"
    return f"{queue_url}/{'/'.join(parts[:2])}"


def is_ingress_error(response: httpx.Response) -> bool:
    """fal's own heuristic (docs/providers.md#fal-errors-and-client-retries): a 502/503/504 without
    `x-fal-request-id` whose body mentions nginx came from the ingress, before fal's queue saw the request.
    Any other 5xx may follow a queued job."""
    return (
        response.status_code in INGRESS_ERRORS
        and "x-fal-request-id" not in response.headers
        and "nginx" in response.text
    )


def fal_error_text(response: httpx.Response) -> str:
    """fal's error message: `detail` as a string, or the `msg`s of a validation `detail` list."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or f"HTTP {response.status_code}"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        return "; ".join(parts) or json.dumps(detail)[:500]
    return json.dumps(body)[:500]


class FalProvider(Provider):
    name: ClassVar[str] = "fal"
    models: ClassVar[tuple[str, ...]] = tuple(FAL_MODELS)
    image_field: ClassVar[str] = IMAGE_FIELDS["fal"]
    # Documented output CDNs (v3, v3b, legacy v2 and fal.media), and Google storage for fal's inputs.
    result_hosts: ClassVar[tuple[str, ...]] = ("*.fal.media", "storage.googleapis.com")

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        queue_url: str,
        key: SecretStr | None,
        jwks: JwksCache,
        user_id: str | None = None,
        tolerance_s: int = 300,
        timeout_s: float = 30.0,
        clock: Callable[[], float],
        first_poll_after_s: float = 60.0,
        poll_interval_s: float = 10.0,
        concurrency: int = 0,
        rate_per_min: int = 0,
        verifier: ThreadedVerifier | None = None,
    ) -> None:
        self.verifier = verifier or ThreadedVerifier()  # not started: verifies inline
        self.webhooks = True
        self.first_poll_after_s = first_poll_after_s
        self.poll_interval_s = poll_interval_s
        self.concurrency = concurrency
        self.rate_per_min = rate_per_min
        self.client = client
        self.queue_url = queue_url
        self._key = key
        self.jwks = jwks
        self.user_id = user_id
        self.tolerance_s = tolerance_s
        self.timeout_s = timeout_s
        self.clock = clock

    def is_configured(self) -> bool:
        return self._key is not None and bool(self._key.get_secret_value())

    def validate_input(self, model: str, data: Any) -> dict[str, Any]:
        return validate_fal_input(model, data)

    def _headers(self) -> dict[str, str]:
        return authorization(self._key, scheme="Key", variable="FAL_KEY")

    def _urls(self, job: Job) -> dict[str, str]:
        urls = dict(job.provider_urls or {})
        if job.provider_request_id:
            base = f"{app_base(self.queue_url, job.model)}/requests/{job.provider_request_id}"
            urls.setdefault("status_url", f"{base}/status")
            urls.setdefault("response_url", base)
            urls.setdefault("cancel_url", f"{base}/cancel")
        return urls

    async def submit(self, job: Job, *, webhook_url: str | None) -> Submission:
        params = {"fal_webhook": webhook_url} if webhook_url else {}
        response = await post_once(
            self.client,
            f"{self.queue_url}/{job.model}",
            provider="fal",
            timeout_s=self.timeout_s,
            headers=self._headers(),
            params=params,
            json_body=job.input,
        )
        status = response.status_code
        if status == 200:
            try:
                body = response.json()
                request_id = str(body["request_id"])
            except (ValueError, KeyError, TypeError) as exc:
                raise AmbiguousError(f"fal accepted the submit but its answer is unreadable: {exc!r}") from exc
            urls = {key: body[key] for key in URL_KEYS if isinstance(body.get(key), str)}
            return Submission(request_id=request_id, urls=urls, queue_position=queue_position(body))
        # A 5xx from fal itself (not its ingress) may come after the job was queued, and billed: never resent.
        retryable = status in RETRYABLE_SUBMIT or is_ingress_error(response)
        raise submit_refusal(response, fal_error_text(response), provider="fal", retryable=retryable)

    async def _get(self, url: str, **params: str) -> httpx.Response:
        try:
            response = await self.client.get(url, params=params, headers=self._headers(), timeout=self.timeout_s)
        except httpx.TransportError as exc:
            raise RetryLaterError(f"fal unreachable: {exc!r}", code="provider_unreachable") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryLaterError(
                f"fal answered {response.status_code}: {fal_error_text(response)}",
                retry_after_s=parse_retry_after(response.headers.get("retry-after")),
            )
        return response

    async def poll(self, job: Job) -> PollResult:
        urls = self._urls(job)
        if "status_url" not in urls:
            raise GiveUpError("job has no fal request id to poll", code="not_submitted")
        response = await self._get(urls["status_url"], logs="0")
        if response.status_code == 404:
            raise GiveUpError(f"fal does not know request {job.provider_request_id}", code="provider_not_found")
        try:
            status = response.json()
        except ValueError as exc:
            raise RetryLaterError("fal status answer is not JSON") from exc
        state = status.get("status") if isinstance(status, dict) else None
        if state == "IN_QUEUE":
            return PollResult(Outcome(JobStatus.SUBMITTED), queue_position=queue_position(status))
        if state == "IN_PROGRESS":
            return PollResult(Outcome(JobStatus.RUNNING))
        if state != "COMPLETED":
            raise RetryLaterError(f"fal status answer has unknown status {state!r}")
        if status.get("error"):
            error = {"code": status.get("error_type") or "provider_error", "message": str(status["error"])}
            return PollResult(Outcome(JobStatus.FAILED, error=error), body=response.content)
        result = await self._get(urls["response_url"])
        if result.status_code == 200:
            try:
                payload = result.json()
            except ValueError as exc:
                raise RetryLaterError("fal result is not JSON") from exc
            metrics = status.get("metrics") if isinstance(status.get("metrics"), dict) else {}
            outcome = succeeded(payload, inference_s=metrics.get("inference_time"))
            return PollResult(outcome, body=result.content)
        if result.status_code in (404, 410):
            raise GiveUpError("fal no longer keeps this result (retention expired)", code="result_expired")
        error = {"code": "provider_error", "message": fal_error_text(result)}
        return PollResult(Outcome(JobStatus.FAILED, error=error), body=result.content)

    async def cancel(self, job: Job) -> None:
        url = self._urls(job).get("cancel_url")
        if url is None:
            return
        try:
            response = await self.client.put(url, headers=self._headers(), timeout=self.timeout_s)
        except httpx.TransportError as exc:
            raise RetryLaterError(f"fal unreachable: {exc!r}", code="provider_unreachable") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryLaterError(f"fal answered {response.status_code} to cancel")
        # 202 CANCELLATION_REQUESTED, 400 ALREADY_COMPLETED, 404 NOT_FOUND: nothing more we can do.

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes, *, now: float) -> VerifiedWebhook:
        keys = await self.jwks.keys()
        facts, signature = parse_fal_headers(headers, now=now, tolerance_s=self.tolerance_s)
        message = await off_loop(body, fal_message, facts.request_id, facts.user_id, facts.raw_timestamp, body)
        if not await self.verifier.verify_any(keys, signature, message):
            # Perhaps fal rotated its key: one rate-limited JWKS refetch, then try the new keys.
            if not await self.jwks.refresh_for_unknown_key() or not await self.verifier.verify_any(
                await self.jwks.keys(), signature, message
            ):
                raise SignatureError("signature does not verify with any known key", code="no_key_matched")
        if self.user_id is not None and facts.user_id != self.user_id:
            raise SignatureError("webhook is for another fal user", code="foreign_user", status_code=403)
        try:
            data = await parse_signed(body)
        except UnrepresentableJSONError as exc:  # bound to the signed request id, as a readable body would be
            raise UnusableSignedBody(exc, request_id=facts.request_id) from None
        except (ValueError, RecursionError):  # a signed body can still be absurdly nested
            raise RejectError("webhook body is not JSON", code="malformed_body") from None
        if not isinstance(data, dict) or data.get("request_id") != facts.request_id:
            raise RejectError("body request_id does not match the signed request id", code="request_id_mismatch")
        outcome = await off_loop(body, webhook_outcome, data)  # decodes inline (data URI) images
        return VerifiedWebhook(dedup_key=facts.request_id, request_id=facts.request_id, outcome=outcome)


def queue_position(answer: Any) -> int | None:
    """The `queue_position` of a submit or status answer (None when absent or not a count)."""
    position = answer.get("queue_position") if isinstance(answer, dict) else None
    return position if isinstance(position, int) and not isinstance(position, bool) and position >= 0 else None


def succeeded(payload: Any, *, inference_s: Any = None) -> Outcome:
    """A fal output as the normalized result; the output itself is kept as `provider_result`."""
    if not isinstance(payload, dict):
        return Outcome(JobStatus.SUCCEEDED, result=normalized([]), provider_result=payload)
    images = [
        url_image(image["url"], content_type=image.get("content_type"), width=image.get("width"),
                  height=image.get("height"), source=f"images[{index}].url")
        for index, image in enumerate(payload.get("images") or [])
        if isinstance(image, dict) and isinstance(image.get("url"), str)
    ]  # fmt: skip
    timings = payload.get("timings")
    seconds = finite_float(inference_s)  # a poll answer is read leniently: it may hold NaN or 1e400
    if seconds is None and isinstance(timings, dict):
        seconds = finite_float(timings.get("inference"))
    result = normalized(
        images,
        seed=payload.get("seed"),
        nsfw=payload.get("has_nsfw_concepts"),
        timings={"inference_s": seconds} if seconds is not None else None,
    )
    return Outcome(JobStatus.SUCCEEDED, result=result, provider_result=payload)


def webhook_outcome(data: dict[str, Any]) -> Outcome | None:
    """What a fal completion means: OK -> succeeded, OK without payload -> fetch it, ERROR -> failed."""
    status = data.get("status")
    if status == "OK":
        payload = data.get("payload")
        if isinstance(payload, dict):
            return succeeded(payload)
        return Outcome(JobStatus.SUCCEEDED, fetch_result=True)
    if status == "ERROR":
        error: dict[str, Any] = {"code": "provider_error", "message": str(data.get("error") or "fal reported an error")}
        if data.get("payload") is not None:
            error["details"] = data["payload"]
        return Outcome(JobStatus.FAILED, error=error)
    return None  # fal documents only OK and ERROR; anything else is not a completion
