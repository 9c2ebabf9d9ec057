"""StepFun: the synchronous `/v1/images/edits` call (multipart, one image) and what its answer means
(docs/providers.md#stepfun)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from receiver.errors import GiveUpError, ReceiverError
from receiver.images.download import fetch_image_bytes
from receiver.models import JobStatus, Outcome
from receiver.providers.sync_api import (
    NOT_PROCESSED,
    ErrorEnvelope,
    ImageRef,
    SyncApiProvider,
    answer_error,
    check_data_uri_image,
)
from receiver.results import image_facts

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


class StepFunProvider(SyncApiProvider[StepFunInput]):
    name: ClassVar[str] = "stepfun"
    models: ClassVar[tuple[str, ...]] = ("step-image-edit-2",)
    label: ClassVar[str] = "StepFun"
    key_variable: ClassVar[str] = "STEP_API_KEY"
    edit_path: ClassVar[str] = "/v1/images/edits"
    input_model = StepFunInput

    def check_input(self, params: StepFunInput) -> None:
        """A data-URI image is decoded now and must be at most 4096x4096."""
        check_data_uri_image(params.image, field="input.image", max_side=MAX_SIDE)

    async def request_parts(self, model: str, params: StepFunInput) -> dict[str, Any]:
        """A multipart upload of the image (fetched by us when it is a URL) with the edit's fields."""
        image = await fetch_image_bytes(self.client, params.image, self.fetch_policy)
        content_type = check_input_image(image)
        file = (f"image.{EXTENSIONS[content_type]}", image, content_type)
        return {"data": params.form_fields(model), "files": {"image": file}}

    def error(self, response: httpx.Response) -> ReceiverError:
        """429/503 come back later, 4xx are final (coded with the envelope's `type`), a 408 or other 5xx unknown."""
        envelope = ErrorEnvelope.read(response)
        return answer_error(
            response,
            envelope,
            provider=self.label,
            label=envelope.type,
            detail=str(response.status_code),
            request_id=response.headers.get("x-request-id"),
            not_processed=STEPFUN_NOT_PROCESSED,
        )

    def refusal(self, answer: Any, items: list[dict[str, Any]]) -> Outcome | None:
        if any(item.get("finish_reason") == "content_filtered" for item in items):
            message = "StepFun's content filter stopped the edited image (finish_reason content_filtered)"
            error = {"code": "content_filtered", "message": message}
            return Outcome(JobStatus.FAILED, error=error, provider_result=answer)
        return None

    def result_seed(self, params: StepFunInput, items: list[dict[str, Any]]) -> Any:
        return items[0].get("seed")  # StepFun reports the seed it used


def check_input_image(data: bytes) -> str:
    """The content type of an input image StepFun can take; GiveUpError when it is not one."""
    content_type, width, height = image_facts(data)
    if content_type is None or width is None or height is None:
        raise GiveUpError("input.image: is not a readable PNG, JPEG, WebP or GIF image", code="bad_input_image")
    if width > MAX_SIDE or height > MAX_SIDE:
        message = f"input.image: image is {width}x{height}; StepFun takes at most {MAX_SIDE}x{MAX_SIDE}"
        raise GiveUpError(message, code="bad_input_image")
    return content_type
