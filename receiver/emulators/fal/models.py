"""Input checks and output shapes of the fal models the emulator knows (stepx-edit2, fast-sdxl)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from receiver.emulators.imaging import FORMATS, EncodedImage

SDXL_PREFIX = "fal-ai/fast-sdxl"
MAX_SIDE = 4096
MAX_IMAGES = 8
IMAGE_SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
DEFAULT_IMAGE_SIZE = "square_hd"


class InputRejected(Exception):
    """The submitted input fails the model's schema; `detail` is fal's validation error list."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class EditPlan:
    """What a request asks the emulated model to do."""

    model_id: str
    prompt: str
    image_url: str
    output_format: str
    size: tuple[int, int] | None  # None keeps the input's size
    num_images: int
    seed: int | None

    @property
    def is_sdxl(self) -> bool:
        return is_sdxl(self.model_id)


def is_sdxl(model_id: str) -> bool:
    return model_id == SDXL_PREFIX or model_id.startswith(SDXL_PREFIX + "/")


def error_item(field: str, msg: str, type_: str) -> dict[str, Any]:
    return {"loc": ["body", field], "msg": msg, "type": type_}


def parse_input(model_id: str, body: object) -> EditPlan:
    """Check `body` against the model's input schema; raises `InputRejected` listing every problem."""
    if not isinstance(body, dict):
        raise InputRejected([{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}])
    errors: list[dict[str, Any]] = []
    for field in ("prompt", "image_url"):
        if field not in body:
            errors.append(error_item(field, "field required", "value_error.missing"))
        elif not isinstance(body[field], str):
            errors.append(error_item(field, "str type expected", "type_error.str"))
    sdxl = is_sdxl(model_id)
    format_field = "format" if sdxl else "output_format"
    output_format = body.get(format_field, "jpeg")
    if output_format not in FORMATS:
        allowed = ", ".join(repr(name) for name in FORMATS)
        msg = f"value is not a valid enumeration member; permitted: {allowed}"
        errors.append(error_item(format_field, msg, "type_error.enum"))
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        errors.append(error_item("seed", "value is not a valid integer", "type_error.integer"))
    size, num_images = None, 1
    if sdxl:
        size = _image_size(body.get("image_size", DEFAULT_IMAGE_SIZE), errors)
        num_images = body.get("num_images", 1)
        if not _is_int(num_images) or not 1 <= num_images <= MAX_IMAGES:
            msg = f"ensure this value is an integer from 1 to {MAX_IMAGES}"
            errors.append(error_item("num_images", msg, "value_error.number"))
    if errors:
        raise InputRejected(errors)
    return EditPlan(model_id, body["prompt"], body["image_url"], output_format, size, num_images, seed)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_size(value: object, errors: list[dict[str, Any]]) -> tuple[int, int] | None:
    if isinstance(value, str) and value in IMAGE_SIZES:
        return IMAGE_SIZES[value]
    if isinstance(value, dict):
        width, height = value.get("width", 512), value.get("height", 512)
        if _is_int(width) and _is_int(height) and 1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE:
            return (width, height)
        msg = f"width and height must be integers from 1 to {MAX_SIDE}"
        errors.append(error_item("image_size", msg, "value_error.number"))
        return None
    allowed = ", ".join(repr(name) for name in IMAGE_SIZES)
    msg = f"value is not a valid enumeration member or a {{width, height}} object; permitted: {allowed}"
    errors.append(error_item("image_size", msg, "type_error.enum"))
    return None


def build_output(
    plan: EditPlan, images: Sequence[tuple[str, EncodedImage]], *, seed: int, inference_s: float
) -> dict[str, Any]:
    """The model's output body, as the result endpoint serves it and the webhook carries it."""
    output: dict[str, Any] = {
        "images": [
            {"url": url, "width": image.width, "height": image.height, "content_type": image.content_type}
            for url, image in images
        ],
    }
    if plan.is_sdxl:
        output["timings"] = {"inference": round(inference_s, 4)}
    output["seed"] = seed
    output["has_nsfw_concepts"] = [False] * len(images)
    output["prompt"] = plan.prompt
    return output
