"""A local emulator of Modelverse's synchronous `POST /v1/images/generations` for step1x-edit
(docs/providers.md#modelverse).

Errors use Modelverse's documented envelope, whose `param` carries the request id. Assumptions [I]:
the `X-Request-Id` header on answers and Retry-After on an injected 429.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.emulators.base import DownloadRefused
from receiver.emulators.imaging import MAX_INPUT_BYTES, ImageError, decode_base64_image, edit_image, image_size
from receiver.emulators.sync_emulator import SyncEmulator, SyncEmulatorConfig, new_request_id

__all__ = ["ModelverseEmulator", "ModelverseEmulatorConfig"]

MODEL = "stepfun-ai/step1x-edit"
MAX_SIDE = 4096
SEVEN_DAYS_S = 7 * 24 * 3600.0
INVALID = "invalid_request_error"
# Injected failures: status -> (type, code, message), from Modelverse's error-code table.
FAILURES = {
    400: (INVALID, "sensitive_check_error", "content check failed"),
    401: (INVALID, "auth_error", "Validate Certification failed"),
    408: ("timeout", "timeout", "request timed out"),
    429: ("rate_limit_error", "rate_limit", "Rate limit exceeded, please try again later"),
    500: ("internal_error", "internal_error", "internal error"),
    504: ("timeout", "gateway_timeout_error", "gateway timeout"),
}


class ModelverseEmulatorConfig(SyncEmulatorConfig):
    """Timings and faults of the Modelverse emulator; result URLs live 7 days."""

    url_ttl_s: float = SEVEN_DAYS_S


@dataclass(frozen=True, slots=True)
class GenerateCall:
    """A valid call: what to edit, how many copies, how to answer."""

    prompt: str
    image: str
    n: int
    response_format: str


class InvalidCall(Exception):
    """A call Modelverse answers 400; `code` is `param_error` or `model_error`."""

    def __init__(self, message: str, code: str = "param_error") -> None:
        super().__init__(message)
        self.code = code


def error_response(
    status: int, type_: str, code: str, message: str, request_id: str, headers: Mapping[str, str] | None = None
) -> Response:
    error = {"message": message, "type": type_, "param": request_id, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers={"X-Request-Id": request_id, **(headers or {})})


def _number(body: Mapping[str, Any], name: str, low: float, high: float, *, integer: bool) -> None:
    if name not in body:
        return
    value = body[name]
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise InvalidCall(f"{name}: must be {kind}")
    if (not integer and not math.isfinite(value)) or not low <= value <= high:
        raise InvalidCall(f"{name}: {value} is out of range [{low}, {high}]")


def parse_call(body: Any) -> GenerateCall:
    """Check a call's JSON body as Modelverse documents it; raises InvalidCall naming the field."""
    if not isinstance(body, dict):
        raise InvalidCall("body: must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidCall("model: is required")
    if model != MODEL:
        raise InvalidCall(f"model: no permission for model {model!r}", code="model_error")
    for name in ("prompt", "image"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise InvalidCall(f"{name}: is required and must be a non-empty string")
    _number(body, "n", 1, 4, integer=True)
    _number(body, "strength", 0, 1, integer=False)
    _number(body, "seed", -1, math.inf, integer=True)
    _number(body, "steps", 1, 50, integer=True)
    _number(body, "guidance_scale", 1, 10, integer=False)
    if "negative_prompt" in body and not isinstance(body["negative_prompt"], str):
        raise InvalidCall("negative_prompt: must be a string")
    response_format = body.get("response_format", "url")
    if response_format not in ("url", "b64_json"):
        raise InvalidCall("response_format: must be url or b64_json")
    return GenerateCall(body["prompt"], body["image"], int(body.get("n", 1)), response_format)


class ModelverseEmulator(SyncEmulator[ModelverseEmulatorConfig]):
    """Modelverse's image-generation endpoint and the files its `url` answers point at; `.app` serves them."""

    edit_path = "/v1/images/generations"

    def __init__(
        self, config: ModelverseEmulatorConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(config if config is not None else ModelverseEmulatorConfig(), clock=clock)

    async def edit(self, request: Request) -> Response:
        request_id = new_request_id()
        if not self.authorized(request):
            return error_response(401, *FAILURES[401], request_id)
        if (status := self.take_failure()) is not None:
            type_, code, message = FAILURES.get(status, ("internal_error", "internal_error", "emulated failure"))
            return error_response(status, type_, code, message, request_id, self.retry_headers(status))
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return error_response(400, INVALID, "param_error", f"body: not valid JSON: {exc}", request_id)
        self.received.append({k: v for k, v in body.items() if k != "image"} if isinstance(body, dict) else {})
        try:
            call = parse_call(body)
            data = await self._load_image(call.image)
            width, height = image_size(data)
            if width > MAX_SIDE or height > MAX_SIDE:
                raise InvalidCall(f"image: {width}x{height} is larger than {MAX_SIDE}x{MAX_SIDE}")
            await asyncio.sleep(self.config.latency_s)
            edited = await asyncio.to_thread(edit_image, data, call.prompt, output_format="png")
        except InvalidCall as exc:
            return error_response(400, INVALID, exc.code, str(exc), request_id)
        except ImageError as exc:
            return error_response(400, INVALID, "param_error", f"image: {exc}", request_id)
        items: list[dict[str, str]] = []
        for _ in range(call.n):
            if call.response_format == "b64_json":
                items.append({"b64_json": "data:image/png;base64," + base64.b64encode(edited.data).decode()})
            else:
                items.append({"url": self.store(request, edited.data, content_type="image/png", extension="png")})
        answer = {"created": int(self.clock()), "data": items, "usage": {"input_tokens_details": {}}}
        return JSONResponse(answer, headers={"X-Request-Id": request_id})

    async def _load_image(self, image: str) -> bytes:
        """The input image's bytes: a data URI or bare base64, or a link the emulator downloads."""
        if not image.startswith(("http://", "https://")):
            return decode_base64_image(image)
        try:
            return await self.download(image, MAX_INPUT_BYTES)
        except DownloadRefused as exc:
            if exc.status is None:
                raise InvalidCall(f"image: larger than {MAX_INPUT_BYTES} bytes") from None
            raise InvalidCall(f"image: download failed with HTTP {exc.status}") from None
        except httpx.HTTPError as exc:
            raise InvalidCall(f"image: download failed: {type(exc).__name__}") from None
