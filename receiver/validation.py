"""Input checks shared by the API, the providers and the subscriptions: image URLs, prompts, and one way of
naming what a pydantic validation error found."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationError

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


def describe_validation_error(exc: ValidationError, *, prefix: str) -> str:
    """One line per problem, each naming the field by its dotted path."""
    lines = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
        # A ValueError raised by a validator comes as "Value error, <its message>": the message is enough.
        message = error["msg"].removeprefix("Value error, ") if error["type"] == "value_error" else error["msg"]
        lines.append(f"{path or 'body'}: {message}")
    return "; ".join(lines)
