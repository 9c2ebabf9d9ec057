"""What a notification says: the message and its image, and the human text chat targets show."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ELLIPSIS = "…"
MAX_IMAGE_LINES = 4


@dataclass(frozen=True)
class ImageAttachment:
    """An image to attach: its bytes (uploaded to Discord and Telegram) and, when it has one, the public
    URL chat services fetch it from themselves (Slack's image block only takes a URL)."""

    data: bytes = field(repr=False)
    content_type: str
    filename: str
    public_url: str | None = None


@dataclass(frozen=True)
class Message:
    """One event as every kind of target receives it: the signed JSON `payload` for webhooks and
    callbacks, `text` (see `describe`) and the optional `image` for chat services."""

    webhook_id: str
    event_type: str
    payload: dict[str, Any]
    text: str
    image: ImageAttachment | None = None


def truncate(text: str, limit: int, *, utf16: bool = False) -> str:
    """`text` cut to at most `limit` characters (UTF-16 code units when `utf16`), ending in an ellipsis
    when cut. Telegram counts its caption and message limits in UTF-16 code units."""

    def size(value: str) -> int:
        return len(value.encode("utf-16-le")) // 2 if utf16 else len(value)

    if size(text) <= limit:
        return text
    # A character outside the BMP takes two UTF-16 units; shrink until it fits rather than count them.
    cut = min(len(text), limit - 1)
    while cut > 0 and size(text[:cut]) > limit - 1:
        cut -= 1
    return text[:cut] + ELLIPSIS


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _job_of(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    data = payload.get("data")
    job = data.get("job") if isinstance(data, Mapping) else None
    return job if isinstance(job, Mapping) else payload


def _error_text(error: Any) -> str | None:
    if isinstance(error, Mapping):
        message, code = _text(error.get("message")), _text(error.get("code"))
        if message and code:
            return f"{message} ({code})"
        return message or code
    return _text(error)


def _image_urls(job: Mapping[str, Any]) -> list[str]:
    images = job.get("images")
    if not isinstance(images, list):
        return []
    urls = [_text(image.get("url")) for image in images if isinstance(image, Mapping)]
    return [url for url in urls if url]


def describe(event_type: str, payload: Mapping[str, Any]) -> str:
    """Plain text for chat targets: a headline with the job id and status, then provider and model, the
    error message of a failed job, and the image URLs. Works on the fan-out event payload
    (`{"data": {"job": {...}}}`) or on a bare job dict; missing fields are left out. An operator alert
    (`{"data": {"alert": {"summary", ...}}}`, `receiver.notify.alerts`) is its summary."""
    data = payload.get("data")
    alert = data.get("alert") if isinstance(data, Mapping) else None
    if isinstance(alert, Mapping):
        return f"Alert ({event_type}): {_text(alert.get('summary')) or 'no summary'}"
    job = _job_of(payload)
    job_id = _text(job.get("id")) or "(unknown job)"
    status = _text(job.get("status")) or event_type.rpartition(".")[2]
    lines = [f"Job {job_id} {status} ({event_type})"]
    provider, model = _text(job.get("provider")), _text(job.get("model"))
    if provider or model:
        lines.append(" / ".join(part for part in (provider, model) if part))
    error = _error_text(job.get("error"))
    if error:
        lines.append(f"Error: {error}")
    urls = _image_urls(job)
    lines.extend(f"Image: {url}" for url in urls[:MAX_IMAGE_LINES])
    if len(urls) > MAX_IMAGE_LINES:
        lines.append(f"(+{len(urls) - MAX_IMAGE_LINES} more images)")
    images_error = _text(job.get("images_error"))
    if images_error:
        lines.append(f"Images not stored: {images_error}")
    return "\n".join(lines)
