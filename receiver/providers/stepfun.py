"""StepFun: the synchronous `/v1/images/edits` call (multipart, one image) and what its answer means
(docs/providers.md#stepfun)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from receiver.errors import AmbiguousError, GiveUpError, InputError, ReceiverError, RetryLaterError
from receiver.images.download import FetchPolicy, fetch_image_bytes
from receiver.models import Job, JobStatus, Outcome
from receiver.providers.base import Provider, Submission, post_once
from receiver.providers.sync_api import (
    NOT_PROCESSED,
    UNKNOWN_OUTCOME_4XX,
    ErrorEnvelope,
    ImageRef,
    bad_answer,
    check_data_uri_image,
    item_images,
    read_answer,
)
from receiver.results import image_facts, normalized
from receiver.tasks.retry import parse_retry_after
from receiver.validation import describe_validation_error

MAX_SIDE = 4096
MAX_TEXT = 512
# StepFun's error codes (docs/providers.md#stepfun-answers-and-errors) also name 503 "overloaded": refused
# before any work was done.
STEPFUN_NOT_PROCESSED = NOT_PROCESSED | {503}
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


class StepFunInput(BaseModel):
    """StepFun's own edit fields; `image` is an http(s) URL or a data URI where StepFun takes a file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    image: ImageRef
    seed: int | None = Field(None, ge=0, le=2_147_483_647)
    steps: int | None = Field(None, ge=1, le=50)
    cfg_scale: float | None = Field(None, ge=1.0, le=10.0)
    size: str | None = None
    negative_prompt: str | None = Field(None, max_length=MAX_TEXT)
    text_mode: bool | None = None
    response_format: Literal["url", "b64_json"] | None = None

    def form_fields(self, model: str) -> dict[str, str]:
        """The multipart text fields. b64_json unless `url` was asked for: StepFun's URLs die after 2 h."""
        fields = {"model": model, "prompt": self.prompt, "response_format": self.response_format or "b64_json"}
        for name in ("seed", "steps", "cfg_scale", "size", "negative_prompt"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = str(value)
        if self.text_mode is not None:
            fields["text_mode"] = "true" if self.text_mode else "false"
        return fields


class StepFunProvider(Provider):
    name: ClassVar[str] = "stepfun"
    models: ClassVar[tuple[str, ...]] = ("step-image-edit-2",)
    synchronous: ClassVar[bool] = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        key: SecretStr | None,
        timeout_s: float,
        fetch_policy: FetchPolicy,
        concurrency: int = 0,
        rate_per_min: int = 0,
    ) -> None:
        self.webhooks = False
        self.concurrency = concurrency
        self.rate_per_min = rate_per_min
        self.client = client
        self.base_url = base_url.rstrip("/")
        self._key = key
        self.timeout_s = timeout_s
        self.fetch_policy = fetch_policy

    def is_configured(self) -> bool:
        return self._key is not None and bool(self._key.get_secret_value())

    def validate_input(self, model: str, data: Any) -> dict[str, Any]:
        """StepFun's fields, checked; a data-URI image is decoded now and must be at most 4096x4096."""
        if model not in self.models:
            raise InputError(f"model: StepFun model {model!r} is not supported; use one of {list(self.models)}")
        try:
            parsed = StepFunInput.model_validate(data)
        except ValidationError as exc:
            raise InputError(describe_validation_error(exc, prefix="input")) from None
        check_data_uri_image(parsed.image, field="input.image", max_side=MAX_SIDE)
        return dict(data)

    async def submit(self, job: Job, *, webhook_url: str | None) -> Submission:
        """Upload the image and run the edit to the end; the answer is the job's final outcome."""
        if self._key is None:
            raise GiveUpError("STEP_API_KEY is not set", code="provider_not_configured")
        try:
            params = StepFunInput.model_validate(job.input)
        except ValidationError as exc:
            raise GiveUpError(describe_validation_error(exc, prefix="input"), code="invalid_input") from None
        image = await fetch_image_bytes(self.client, params.image, self.fetch_policy)
        content_type = check_input_image(image)
        response = await post_once(
            self.client,
            f"{self.base_url}/v1/images/edits",
            provider="StepFun",
            timeout_s=self.timeout_s,
            headers={"Authorization": f"Bearer {self._key.get_secret_value()}"},
            data=params.form_fields(job.model),
            files={"image": (f"image.{EXTENSIONS[content_type]}", image, content_type)},
        )
        request_id = response.headers.get("x-request-id")
        if not response.is_success:
            raise stepfun_error(response, request_id)
        return Submission(request_id=request_id, outcome=stepfun_outcome(response.content), body=response.content)


def check_input_image(data: bytes) -> str:
    """The content type of an input image StepFun can take; GiveUpError when it is not one."""
    content_type, width, height = image_facts(data)
    if content_type is None or width is None or height is None:
        raise GiveUpError("input.image: is not a readable PNG, JPEG, WebP or GIF image", code="bad_input_image")
    if width > MAX_SIDE or height > MAX_SIDE:
        message = f"input.image: image is {width}x{height}; StepFun takes at most {MAX_SIDE}x{MAX_SIDE}"
        raise GiveUpError(message, code="bad_input_image")
    return content_type


def stepfun_error(response: httpx.Response, request_id: str | None) -> ReceiverError:
    """The exception for a non-2xx answer: 429/503 come back later, 4xx are final, a 408 or other 5xx unknown."""
    status = response.status_code
    envelope = ErrorEnvelope.read(response)
    if status in STEPFUN_NOT_PROCESSED:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        message = f"StepFun answered {status}: {envelope.message}"
        return RetryLaterError(message, retry_after_s=retry_after, code=envelope.type or "provider_unavailable")
    if 400 <= status < 500 and status not in UNKNOWN_OUTCOME_4XX:
        message = f"StepFun refused the edit ({status}): {envelope.message}"
        return GiveUpError(message, code=envelope.type or f"stepfun_{status}", request_id=request_id)
    # A 500 (or a timeout) may come after the edit ran and was paid for: never resend it.
    return AmbiguousError(f"StepFun answered {status} ({envelope.message}); the edit may have run: not resent")


def stepfun_outcome(body: bytes) -> Outcome:
    """What a 200 means: the images (inline for b64_json), or FAILED when filtered or unreadable."""
    try:
        answer, items = read_answer(body)
    except ValueError as exc:
        return bad_answer(f"StepFun's answer is unreadable: {exc}", answer=None)
    if any(item.get("finish_reason") == "content_filtered" for item in items):
        message = "StepFun's content filter stopped the edited image (finish_reason content_filtered)"
        return Outcome(JobStatus.FAILED, error={"code": "content_filtered", "message": message}, provider_result=answer)
    try:
        images = item_images(items)
    except ValueError as exc:
        return bad_answer(f"StepFun's answer is unusable: {exc}", answer=answer)
    return Outcome(JobStatus.SUCCEEDED, result=normalized(images, seed=items[0].get("seed")), provider_result=answer)
