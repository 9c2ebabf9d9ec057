"""Modelverse (UCloud): the synchronous OpenAI-style `/v1/images/generations` call for step1x-edit
(docs/providers.md#modelverse)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from receiver.errors import AmbiguousError, GiveUpError, InputError, ReceiverError, RetryLaterError
from receiver.images.download import FetchPolicy
from receiver.models import Job, JobStatus, Outcome
from receiver.providers.base import Provider, Submission, post_once
from receiver.providers.sync_api import (
    NOT_PROCESSED,
    UNKNOWN_OUTCOME_4XX,
    ErrorEnvelope,
    ImageRefOrBase64,
    bad_answer,
    check_data_uri_image,
    item_images,
    read_answer,
)
from receiver.results import normalized
from receiver.tasks.retry import parse_retry_after
from receiver.validation import describe_validation_error


class ModelverseInput(BaseModel):
    """Modelverse's documented fields; `image` (a URL, a data URI or bare base64) is passed through as given."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1)
    image: ImageRefOrBase64
    n: int | None = Field(None, ge=1, le=4)
    strength: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=-1)
    steps: int | None = Field(None, ge=1, le=50)
    guidance_scale: float | None = Field(None, ge=1, le=10)
    negative_prompt: str | None = None
    response_format: Literal["url", "b64_json"] | None = None

    def body(self, model: str) -> dict[str, Any]:
        """The JSON body. b64_json unless `url` was asked for: the images arrive with the answer."""
        body: dict[str, Any] = {"model": model, **self.model_dump(exclude_none=True)}
        body["response_format"] = self.response_format or "b64_json"
        return body


class ModelverseProvider(Provider):
    name: ClassVar[str] = "modelverse"
    models: ClassVar[tuple[str, ...]] = ("stepfun-ai/step1x-edit",)
    # Likely (docs/providers.md#modelverse-hosts-and-latency); b64_json is the default.
    result_hosts: ClassVar[tuple[str, ...]] = ("*.ufileos.com",)
    synchronous: ClassVar[bool] = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        key: SecretStr | None,
        timeout_s: float,
        fetch_policy: FetchPolicy | None = None,
        concurrency: int = 0,
        rate_per_min: int = 0,
    ) -> None:
        """`fetch_policy` is taken for a constructor like StepFun's; Modelverse downloads URL inputs itself."""
        self.webhooks = False
        self.concurrency = concurrency
        self.rate_per_min = rate_per_min
        self.client = client
        self.base_url = base_url.rstrip("/")
        self._key = key
        self.timeout_s = timeout_s
        self.fetch_policy = fetch_policy if fetch_policy is not None else FetchPolicy()

    def is_configured(self) -> bool:
        return self._key is not None and bool(self._key.get_secret_value())

    def validate_input(self, model: str, data: Any) -> dict[str, Any]:
        """Modelverse's fields, checked; a data-URI image must decode to a readable image."""
        if model not in self.models:
            raise InputError(f"model: Modelverse model {model!r} is not supported; use one of {list(self.models)}")
        try:
            parsed = ModelverseInput.model_validate(data)
        except ValidationError as exc:
            raise InputError(describe_validation_error(exc, prefix="input")) from None
        check_data_uri_image(parsed.image, field="input.image")
        return dict(data)

    async def submit(self, job: Job, *, webhook_url: str | None) -> Submission:
        """Run the edit to the end; the answer is the job's final outcome."""
        if self._key is None:
            raise GiveUpError("MODELVERSE_API_KEY is not set", code="provider_not_configured")
        try:
            params = ModelverseInput.model_validate(job.input)
        except ValidationError as exc:
            raise GiveUpError(describe_validation_error(exc, prefix="input"), code="invalid_input") from None
        response = await post_once(
            self.client,
            f"{self.base_url}/v1/images/generations",
            provider="Modelverse",
            timeout_s=self.timeout_s,
            headers={"Authorization": f"Bearer {self._key.get_secret_value()}"},
            json_body=params.body(job.model),
        )
        if not response.is_success:
            raise modelverse_error(response)
        seed = params.seed if params.seed is not None and params.seed >= 0 else None
        outcome = modelverse_outcome(response.content, seed=seed)
        return Submission(request_id=response.headers.get("x-request-id"), outcome=outcome, body=response.content)


def modelverse_error(response: httpx.Response) -> ReceiverError:
    """The exception for a non-2xx answer: 429 comes back later, 4xx are final (keeping the request id
    Modelverse sends as `param`), a 408 or 5xx (503 included: its table has none) is unknown. Its table
    (docs/providers.md#modelverse-answers-and-errors) lists 500 `internal_error`/`model_server_error` and 504
    `gateway_timeout_error` with no promise the edit did not run."""
    status = response.status_code
    envelope = ErrorEnvelope.read(response)
    label = envelope.code or envelope.type
    detail = f"{status} {label}" if label else str(status)
    if status in NOT_PROCESSED:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        message = f"Modelverse answered {detail}: {envelope.message}"
        return RetryLaterError(message, retry_after_s=retry_after, code=label or "provider_unavailable")
    if 400 <= status < 500 and status not in UNKNOWN_OUTCOME_4XX:
        request_id = envelope.param or response.headers.get("x-request-id")
        message = f"Modelverse refused the edit ({detail}): {envelope.message}"
        return GiveUpError(message, code=label or f"modelverse_{status}", request_id=request_id)
    # The edit may have run and been paid for: never resent.
    return AmbiguousError(f"Modelverse answered {detail} ({envelope.message}); the edit may have run: not resent")


def modelverse_outcome(body: bytes, *, seed: int | None) -> Outcome:
    """What a 200 means: every image in `data` (inline for b64_json, with or without a data-URI prefix)."""
    try:
        answer, items = read_answer(body)
    except ValueError as exc:
        return bad_answer(f"Modelverse's answer is unreadable: {exc}", answer=None)
    try:
        images = item_images(items)
    except ValueError as exc:
        return bad_answer(f"Modelverse's answer is unusable: {exc}", answer=answer)
    return Outcome(JobStatus.SUCCEEDED, result=normalized(images, seed=seed), provider_result=answer)
