"""fal's documented input schemas for the supported models, as pydantic models (unknown fields refused)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.errors import InputError
from receiver.validation import ImageUrl, Prompt, describe_validation_error

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
