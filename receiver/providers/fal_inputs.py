"""fal's documented input schemas for the supported models, as pydantic models (unknown fields refused)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from receiver.errors import InputError
from receiver.support.jsontext import SLICE_CHARS

_DATA_URI_HEAD = re.compile(r"data:image/(png|jpeg|jpg|webp|gif);base64,")
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=\s]+")


def is_base64_text(value: str, start: int) -> bool:
    """Whether `value[start:]` is non-empty base64 text, checked a slice at a time: one regex run over
    megabytes holds the GIL for tens of milliseconds, stalling the event loop even from a worker thread."""
    return start < len(value) and all(
        _BASE64_TEXT.fullmatch(value, begin, min(begin + SLICE_CHARS, len(value)))
        for begin in range(start, len(value), SLICE_CHARS)
    )


def check_image_url(value: str) -> str:
    """An http(s) URL or a base64 image data URI, the two forms fal accepts for file inputs."""
    if value.startswith(("https://", "http://")):
        if len(value) > 8192:
            raise ValueError("URL is longer than 8192 characters")
        return value
    if value.startswith("data:"):
        head = _DATA_URI_HEAD.match(value)
        if head is None or not is_base64_text(value, head.end()):
            raise ValueError("data URI must be data:image/<png|jpeg|webp|gif>;base64,<data>")
        return value
    raise ValueError("must be an http(s) URL or a data:image/...;base64 URI")


ImageUrl = Annotated[str, AfterValidator(check_image_url)]
Prompt = Annotated[str, Field(min_length=1, max_length=10000)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]


class FalInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class StepxEdit2Input(FalInput):
    """fal-ai/stepx-edit2 (Step1X-Edit v1.2 with thinking and reflection)."""

    prompt: Prompt
    image_url: ImageUrl
    negative_prompt: str = ""
    seed: Seed | None = None
    guidance_scale: float = Field(6.0, ge=0, le=20)
    num_inference_steps: int = Field(50, ge=1, le=100)
    enable_thinking_mode: bool = True
    enable_reflection_mode: bool = True
    sync_mode: bool = False
    enable_safety_checker: bool = True
    output_format: Literal["jpeg", "png"] = "jpeg"


class ImageSize(FalInput):
    width: int = Field(512, ge=64, le=14142)
    height: int = Field(512, ge=64, le=14142)


class LoraWeight(FalInput):
    path: str = Field(min_length=1)
    scale: float = Field(1.0, ge=0, le=4)
    force: bool = False


class Embedding(FalInput):
    path: str = Field(min_length=1)
    tokens: list[str] = Field(default_factory=lambda: ["<s0>", "<s1>"])


class FastSdxlImageToImageInput(FalInput):
    """fal-ai/fast-sdxl/image-to-image."""

    image_url: ImageUrl
    prompt: Prompt
    negative_prompt: str = ""
    image_size: (
        Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"] | ImageSize
    ) = "square_hd"
    num_inference_steps: int = Field(25, ge=1, le=65)
    guidance_scale: float = Field(7.5, ge=0, le=20)
    strength: float = Field(0.95, gt=0, le=1)
    seed: Seed | None = None
    sync_mode: bool = False
    num_images: int = Field(1, ge=1, le=8)
    loras: list[LoraWeight] = Field(default_factory=list, max_length=5)
    embeddings: list[Embedding] = Field(default_factory=list, max_length=5)
    enable_safety_checker: bool = True
    safety_checker_version: Literal["v1", "v2"] = "v1"
    expand_prompt: bool = False
    format: Literal["jpeg", "png"] = "jpeg"
    request_id: str = ""


FAL_MODELS: dict[str, type[FalInput]] = {
    "fal-ai/stepx-edit2": StepxEdit2Input,
    "fal-ai/fast-sdxl/image-to-image": FastSdxlImageToImageInput,
}


def validate_fal_input(model: str, data: Any) -> dict[str, Any]:
    """The input as the caller gave it (defaults are not added), checked against the model's schema."""
    schema = FAL_MODELS.get(model)
    if schema is None:
        raise InputError(f"model: fal model {model!r} is not supported; use one of {sorted(FAL_MODELS)}")
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc, prefix="input")) from None
    return dict(data)


def describe_validation_error(exc: ValidationError, *, prefix: str) -> str:
    """One line per problem, each naming the field by its dotted path."""
    lines = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
        # A ValueError raised by a validator comes as "Value error, <its message>": the message is enough.
        message = error["msg"].removeprefix("Value error, ") if error["type"] == "value_error" else error["msg"]
        lines.append(f"{path or 'body'}: {message}")
    return "; ".join(lines)
