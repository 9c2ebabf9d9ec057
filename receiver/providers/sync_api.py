"""What the synchronous image APIs (StepFun, Modelverse) share: one POST, their error envelope, image inputs."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator

from receiver.errors import InputError
from receiver.models import JobStatus, Outcome
from receiver.results import decode_b64, decode_data_uri, image_dimensions, inline_image, url_image

MAX_URL_CHARS = 8192
# The answer both document as "nothing was done" (rate limited): the same call may be made again. Any
# other 5xx, or a 408 timeout, may come after the edit ran and was paid for: its outcome is unknown.
# Modelverse's error table (docs/providers.md#modelverse-answers-and-errors) has no 503 at all; StepFun adds
# its 503 "overloaded".
NOT_PROCESSED = frozenset({429})
UNKNOWN_OUTCOME_4XX = frozenset({408})


def check_image_ref(value: str) -> str:
    """An http(s) URL or a base64 data URI: the two ways our API takes an input image."""
    if value.startswith(("https://", "http://")):
        if len(value) > MAX_URL_CHARS:
            raise ValueError(f"URL is longer than {MAX_URL_CHARS} characters")
        return value
    if value.startswith("data:"):
        try:
            decode_data_uri(value)
        except ValueError as exc:
            raise ValueError(f"must be a base64 data URI ({exc})") from None
        return value
    raise ValueError("must be an http(s) URL or a data:image/...;base64 URI")


def check_image_ref_or_base64(value: str) -> str:
    """An http(s) URL, a base64 data URI, or bare base64 image data (Modelverse's "Base64 data or image link")."""
    if value.startswith(("https://", "http://", "data:")):
        return check_image_ref(value)
    try:
        bare_base64(value)
    except ValueError:
        raise ValueError("must be an http(s) URL, a data:image/...;base64 URI or base64 image data") from None
    return value


def bare_base64(value: str) -> bytes:
    """The bytes of strict base64 (no prefix, no whitespace); ValueError when it is not that."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64 ({exc})") from None


ImageRef = Annotated[str, AfterValidator(check_image_ref)]
ImageRefOrBase64 = Annotated[str, AfterValidator(check_image_ref_or_base64)]


def check_data_uri_image(value: str, *, field: str, max_side: int | None = None) -> None:
    """For an inline input (a data URI, or bare base64 where allowed): its bytes must be a readable image
    (of at most `max_side` px a side)."""
    if value.startswith(("https://", "http://")):
        return  # a URL: checked when it is fetched
    try:
        data = decode_data_uri(value)[1] if value.startswith("data:") else bare_base64(value)
    except ValueError as exc:
        raise InputError(f"{field}: {exc}") from None
    image_dimensions(data, field=field, max_side=max_side)


@dataclass(frozen=True, slots=True)
class ErrorEnvelope:
    """`{"error": {"message", "type", "param"?, "code"?}}`, read leniently; `documented` is False when
    the body had no such envelope (a proxy's page, say)."""

    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None
    documented: bool = False

    @classmethod
    def read(cls, response: httpx.Response) -> ErrorEnvelope:
        fallback = response.text[:500].strip() or f"HTTP {response.status_code}"
        try:
            body = response.json()
        except ValueError:
            return cls(fallback)
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(json.dumps(body)[:500] if body else fallback)
        message = error.get("message")
        return cls(
            message=message if isinstance(message, str) and message else fallback,
            type=_text(error.get("type")),
            code=_text(error.get("code")),
            param=_text(error.get("param")),
            documented=True,
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def read_answer(body: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A 200 answer `{"created", "data": [...], ...}` and its `data` items; ValueError when unusable."""
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    items = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(items, list) or not items or not all(isinstance(item, dict) for item in items):
        raise ValueError("`data` is not a list of objects")
    return answer, items


def item_images(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The normalized images of `data` items: inline for `b64_json` (a data-URI prefix is optional), else
    `url`. ValueError naming the item when one has neither, or inline bytes that are not an image."""
    images = []
    for index, item in enumerate(items):
        if isinstance(item.get("b64_json"), str) and item["b64_json"]:
            try:
                data = decode_b64(item["b64_json"])
            except ValueError as exc:
                raise ValueError(f"data[{index}].b64_json is not base64 ({exc})") from None
            image = inline_image(data, source=f"data[{index}].b64_json")
            if image["content_type"] is None:
                raise ValueError(f"data[{index}].b64_json is not a PNG, JPEG, WebP or GIF image")
            images.append(image)
        elif isinstance(item.get("url"), str) and item["url"]:
            images.append(url_image(item["url"]))
        else:
            raise ValueError(f"data[{index}] has neither b64_json nor url")
    return images


def bad_answer(message: str, *, answer: Any) -> Outcome:
    """A 200 we cannot use. The edit ran (and was paid for), so the job fails instead of being resent."""
    return Outcome(
        JobStatus.FAILED, error={"code": "provider_bad_response", "message": message}, provider_result=answer
    )
