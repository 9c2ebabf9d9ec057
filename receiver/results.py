"""The one normalized result shape every provider's output is turned into.

    {"images": [image, ...], "seed": int | None, "nsfw": [bool, ...] | None, "timings": {...} | None}

An image is `{"url", "inline", "content_type", "width", "height"}`: `url` is the provider's URL, or
None when the image came inline (a data URI or `b64_json`); then `inline` is
`{"source": "<where in provider_result>", "bytes": n}` and the bytes stay in the job's
`provider_result` for the fetch step. Timings are seconds, from the provider's own figures.
"""

from __future__ import annotations

import binascii
import io
import re
from typing import Any

from PIL import Image, UnidentifiedImageError

from receiver.errors import InputError
from receiver.support.jsontext import SLICE_CHARS

_DATA_URI_HEAD = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[\w=.-]+)*;base64,")
MAX_HEAD_CHARS = 1024  # a data URI's media type and parameters; the head is looked for no further
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_ALPHABET = bytes(sorted(set(range(256)) - set(_ALPHABET)))
FORMAT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def decode_data_uri(value: str) -> tuple[str | None, bytes]:
    """(content type, bytes) of a base64 data URI; raises ValueError when it is not one."""
    match = _DATA_URI_HEAD.match(value[:MAX_HEAD_CHARS])
    if not match:
        raise ValueError("not a base64 data URI")
    try:
        data = decode_base64_sliced(value, match.end())
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64 in data URI: {exc}") from exc
    return match.group("type"), data


def decode_base64_sliced(text: str, start: int = 0) -> bytes:
    """The bytes `text[start:]` encodes in base64, decoded a slice at a time: one call over megabytes would
    hold the GIL for tens of milliseconds, so a worker thread decoding a big image would stall the event
    loop as much as decoding it there. Like `base64.b64decode`, characters outside the base64 alphabet
    (line breaks, junk) are skipped; padding must end the data. Raises ValueError (binascii.Error for bad
    base64, UnicodeEncodeError for a non-ASCII character)."""
    parts, carry = [], b""
    for begin in range(start, len(text), SLICE_CHARS):
        chunk = text[begin : begin + SLICE_CHARS].encode("ascii")
        if chunk.translate(None, _ALPHABET):  # fast C loops; a regex over the slice is 20x slower
            chunk = chunk.translate(None, _NOT_ALPHABET)
        chunk = carry + chunk
        last = begin + SLICE_CHARS >= len(text)
        cut = len(chunk) if last else len(chunk) - len(chunk) % 4
        piece, carry = chunk[:cut], chunk[cut:]
        if not last and piece.endswith(b"="):
            raise binascii.Error("padding before the end of the data")
        parts.append(binascii.a2b_base64(piece, strict_mode=True))
    return b"".join(parts)


def decode_b64(value: str) -> bytes:
    """Bytes of a base64 string that may carry a `data:...;base64,` prefix (Modelverse sends one)."""
    if value.startswith("data:"):
        return decode_data_uri(value)[1]
    try:
        return decode_base64_sliced(value)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64: {exc}") from exc


def image_facts(data: bytes) -> tuple[str | None, int | None, int | None]:
    """(content type, width, height) read from an image's header, or Nones when it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return FORMAT_TYPES.get(image.format or ""), image.width, image.height
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None, None, None


def image_dimensions(data: bytes, *, field: str, max_side: int | None = None) -> tuple[int, int]:
    """Width and height of an input image; raises InputError naming `field` when unreadable or too big."""
    _, width, height = image_facts(data)
    if width is None or height is None:
        raise InputError(f"{field}: is not a readable PNG, JPEG, WebP or GIF image")
    if max_side is not None and (width > max_side or height > max_side):
        raise InputError(f"{field}: image is {width}x{height}; at most {max_side}x{max_side} is allowed")
    return width, height


def url_image(
    url: str,
    *,
    content_type: str | None = None,
    width: int | None = None,
    height: int | None = None,
    source: str = "url",
) -> dict[str, Any]:
    """An image the provider serves at `url`; a data URI counts as inline, found again at `source` (a
    path into the provider's output such as `images[0].url`)."""
    if url.startswith("data:"):
        try:
            return inline_image(decode_data_uri(url)[1], source=source)
        except ValueError:
            pass
    return {"url": url, "inline": None, "content_type": content_type, "width": width, "height": height}


def inline_image(data: bytes, *, source: str) -> dict[str, Any]:
    """An image that came as bytes in the response; its facts are read from the bytes."""
    content_type, width, height = image_facts(data)
    return {
        "url": None,
        "inline": {"source": source, "bytes": len(data)},
        "content_type": content_type,
        "width": width,
        "height": height,
    }


def normalized(
    images: list[dict[str, Any]],
    *,
    seed: Any = None,
    nsfw: Any = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    return {
        "images": images,
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        "nsfw": [bool(x) for x in nsfw] if isinstance(nsfw, list) else None,
        "timings": timings or None,
    }


_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def inline_bytes(provider_result: Any, source: str) -> bytes:
    """The bytes of an inline image: follow `source` (e.g. `data[0].b64_json`) into the provider's output
    and decode the base64 or data URI found there. Raises ValueError when there is nothing to decode."""
    value = provider_result
    for name, index in _PATH_TOKEN.findall(source):
        if name:
            if not isinstance(value, dict) or name not in value:
                raise ValueError(f"{source}: no {name!r} in the provider output")
            value = value[name]
        else:
            if not isinstance(value, list) or int(index) >= len(value):
                raise ValueError(f"{source}: no item {index} in the provider output")
            value = value[int(index)]
    if not isinstance(value, str):
        raise ValueError(f"{source}: not a base64 string")
    return decode_b64(value)
