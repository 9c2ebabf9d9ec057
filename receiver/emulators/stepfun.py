"""A local emulator of StepFun's synchronous `POST /v1/images/edits` (multipart;
docs/providers.md#stepfun).

Wire facts not in StepFun's docs are our assumptions [I]: the `type` of every error but 401, the
`X-Request-Id` header on every answer (errors too, as OpenAI-compatible APIs send it and the OpenAI SDK
reads it into `APIStatusError.request_id`), Retry-After on 429/503, how a base64 image travels (a text
`image` field), and that the OpenAI SDK's list form of `image` (parts named `image[]`) is accepted.
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.emulators.imaging import ImageError, decode_base64_image, edit_image, image_size
from receiver.emulators.sync_emulator import SyncEmulator, SyncEmulatorConfig, new_request_id

__all__ = ["StepFunEmulator", "StepFunEmulatorConfig"]

MODELS = frozenset({"step-image-edit-2", "step-1x-edit"})
MAX_PROMPT_CHARS = 512
MAX_SIDE = 4096
MAX_SEED = 2_147_483_647
MAX_PART_BYTES = 30 * 1024 * 1024  # a base64 `image` text field is a part too
TRUE, FALSE = frozenset({"true", "1"}), frozenset({"false", "0"})
INVALID = "invalid_request_error"
# Injected failures: status -> (message, type), in StepFun's OpenAI-style envelope.
FAILURES = {
    400: ("Invalid request: the image could not be processed", INVALID),
    401: ("Incorrect API key provided", "invalid_api_key"),
    402: ("Insufficient account balance", "insufficient_balance"),
    404: ("The requested resource was not found", "not_found"),
    429: ("Rate limit reached for requests, please retry after a short wait", "rate_limit_exceeded"),
    451: ("The request was rejected by content moderation", "content_moderation"),
    500: ("The server had an error while processing your request", "server_error"),
    503: ("The engine is currently overloaded, please try again later", "engine_overloaded"),
}


class StepFunEmulatorConfig(SyncEmulatorConfig):
    """Timings and faults of the StepFun emulator."""

    content_filtered: bool = Field(
        False, description="Answer 200 with `finish_reason: content_filtered` instead of `success`."
    )


@dataclass(frozen=True, slots=True)
class EditCall:
    """A valid call: what to edit and how to answer."""

    prompt: str
    image: bytes
    seed: int | None
    response_format: str


class InvalidCall(Exception):
    """A call StepFun answers 400; the message names the field."""


IMAGE_FIELDS = frozenset({"image", "image[]"})  # `image[]`: the OpenAI SDK's list form, `image=[file]`


def error_response(
    status: int, message: str, type_: str, request_id: str, headers: Mapping[str, str] | None = None
) -> Response:
    headers = {"X-Request-Id": request_id, **(headers or {})}
    return JSONResponse({"error": {"message": message, "type": type_}}, status_code=status, headers=headers)


def _int(fields: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    if name not in fields:
        return None
    try:
        value = int(fields[name])
    except ValueError:
        raise InvalidCall(f"{name}: must be an integer in [{low}, {high}]") from None
    if not low <= value <= high:
        raise InvalidCall(f"{name}: {value} is out of range [{low}, {high}]")
    return value


def _float(fields: Mapping[str, str], name: str, low: float, high: float) -> float | None:
    if name not in fields:
        return None
    try:
        value = float(fields[name])
    except ValueError:
        raise InvalidCall(f"{name}: must be a number in [{low}, {high}]") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidCall(f"{name}: {fields[name]} is out of range [{low}, {high}]")
    return value


def _text(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name, "")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidCall(f"{name}: is {len(value)} characters; at most {MAX_PROMPT_CHARS} are allowed")
    return value


def parse_call(fields: Mapping[str, str], images: list[bytes | str]) -> EditCall:
    """Check a call's text fields and its `image` parts as StepFun documents them; raises InvalidCall."""
    model = fields.get("model")
    if not model:
        raise InvalidCall("model: is required")
    if model not in MODELS:
        raise InvalidCall(f"model: {model!r} is not supported; use step-image-edit-2")
    prompt = _text(fields, "prompt")
    if not prompt:
        raise InvalidCall("prompt: is required")
    _text(fields, "negative_prompt")
    seed = _int(fields, "seed", 0, MAX_SEED)
    _int(fields, "steps", 1, 50)
    _float(fields, "cfg_scale", 1.0, 10.0)
    text_mode = fields.get("text_mode", "false").lower()
    if text_mode not in TRUE | FALSE:
        raise InvalidCall("text_mode: must be true or false")
    response_format = fields.get("response_format", "url")
    if response_format not in ("url", "b64_json"):
        raise InvalidCall("response_format: must be url or b64_json")
    if not images:
        raise InvalidCall("image: is required")
    if len(images) > 1:
        raise InvalidCall(f"image: only one image is supported, got {len(images)}")
    try:
        data = decode_base64_image(images[0]) if isinstance(images[0], str) else images[0]
        width, height = image_size(data)
    except ImageError as exc:
        raise InvalidCall(f"image: {exc}") from None
    if width > MAX_SIDE or height > MAX_SIDE:
        raise InvalidCall(f"image: {width}x{height} is larger than {MAX_SIDE}x{MAX_SIDE}")
    return EditCall(prompt=prompt, image=data, seed=seed, response_format=response_format)


class StepFunEmulator(SyncEmulator[StepFunEmulatorConfig]):
    """StepFun's image-edit endpoint and the files its `url` answers point at; `.app` serves them."""

    edit_path = "/v1/images/edits"

    def __init__(self, config: StepFunEmulatorConfig | None = None, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(config if config is not None else StepFunEmulatorConfig(), clock=clock)

    async def edit(self, request: Request) -> Response:
        request_id = new_request_id()
        if not self.authorized(request):
            return error_response(401, *FAILURES[401], request_id)
        if (status := self.take_failure()) is not None:
            message, type_ = FAILURES.get(status, ("Emulated failure", "server_error"))
            return error_response(status, message, type_, request_id, self.retry_headers(status))
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error_response(400, "the body must be multipart/form-data", INVALID, request_id)
        try:
            fields, images = await read_form(request)
        except (HTTPException, MultiPartException) as exc:
            detail = exc.detail if isinstance(exc, HTTPException) else exc.message
            return error_response(400, f"malformed multipart body: {detail}", INVALID, request_id)
        self.received.append(fields)
        try:
            call = parse_call(fields, images)
        except InvalidCall as exc:
            return error_response(400, str(exc), INVALID, request_id)
        await asyncio.sleep(self.config.latency_s)
        try:
            edited = await asyncio.to_thread(edit_image, call.image, call.prompt, output_format="png")
        except ImageError as exc:
            return error_response(400, f"image: {exc}", INVALID, request_id)
        finish_reason = "content_filtered" if self.config.content_filtered else "success"
        seed = call.seed if call.seed is not None else random.randint(0, MAX_SEED)
        item: dict[str, Any] = {"seed": seed, "finish_reason": finish_reason}
        if call.response_format == "b64_json":
            item["b64_json"] = base64.b64encode(edited.data).decode()
        else:
            item["url"] = self.store(request, edited.data, content_type=edited.content_type, extension="png")
        body = {"created": int(self.clock()), "data": [item]}
        return JSONResponse(body, headers={"X-Request-Id": request_id})


async def read_form(request: Request) -> tuple[dict[str, str], list[bytes | str]]:
    """The text fields (the last of repeated names) and every `image` or `image[]` part, file or text."""
    fields: dict[str, str] = {}
    images: list[bytes | str] = []
    async with request.form(max_files=8, max_fields=64, max_part_size=MAX_PART_BYTES) as form:
        for name, value in form.multi_items():
            if name in IMAGE_FIELDS:
                images.append(await value.read() if isinstance(value, UploadFile) else value)
            elif isinstance(value, str):
                fields[name] = value
    return fields, images
