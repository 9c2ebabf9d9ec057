"""Media uploads of the WaveSpeed emulator: the documented one-shot binary upload and the SDK's ticket + PUT.

`POST /api/v3/media/upload/binary` (multipart `file`) is WaveSpeed's documented upload; the official
Python SDK (`wavespeed` 2.x, `Client.upload`) instead asks `POST /api/v3/media/uploads` for a ticket
(`data.upload` {method PUT, url, headers} and `data.download_url`), PUTs the bytes, then uses the
download URL [V-code] (docs/providers.md#wavespeed-media-uploads). Both keep files 7 days, as WaveSpeed documents.
"""

from __future__ import annotations

import mimetypes
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

UPLOAD_TTL_S = 7 * 24 * 3600.0
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # WaveSpeed's documented image limit; the emulator edits images only
KINDS = ("image", "video", "audio")
MAX_TICKETS = 1024

# Keeps `data` under `name` with `content_type` for `ttl_s` seconds (the emulator's CDN).
KeepFile = Callable[[str, bytes, str, float], None]


class UploadRejected(ValueError):
    """An upload WaveSpeed answers 400; the message names the field."""


@dataclass(frozen=True, slots=True)
class Ticket:
    filename: str
    size: int
    content_type: str
    name: str  # the file's name on the emulator's CDN


def kind_of(content_type: str) -> str:
    """`image`, `video` or `audio` from a media type; raises `UploadRejected` for anything else."""
    kind = content_type.split("/", 1)[0].strip().lower()
    if kind not in KINDS:
        raise UploadRejected(f"file: unsupported type {content_type!r}; upload an image, video or audio file")
    return kind


def cdn_name(filename: str, content_type: str) -> str:
    extension = mimetypes.guess_extension(content_type) or ""
    return f"upload-{secrets.token_urlsafe(16)}{extension}"


class Uploads:
    """Upload tickets waiting for their PUT, and the files both upload forms store."""

    def __init__(self, keep_file: KeepFile) -> None:
        self._keep_file = keep_file
        self._tickets: dict[str, Ticket] = {}

    def open_ticket(self, body: object, base_url: str) -> dict[str, Any]:
        """The `data` of a ticket answer for `{filename, size, content_type?}`; raises `UploadRejected`."""
        if not isinstance(body, dict):
            raise UploadRejected("the request body must be a JSON object")
        filename, size = body.get("filename"), body.get("size")
        if not isinstance(filename, str) or not filename:
            raise UploadRejected("filename is required")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_UPLOAD_BYTES:
            raise UploadRejected(f"size must be an integer from 1 to {MAX_UPLOAD_BYTES}")
        content_type = body.get("content_type") or mimetypes.guess_type(filename)[0]
        if not isinstance(content_type, str):
            raise UploadRejected("content_type is required when the filename does not tell it")
        kind_of(content_type)
        ticket_id = secrets.token_urlsafe(24)
        if len(self._tickets) >= MAX_TICKETS:
            self._tickets.pop(next(iter(self._tickets)))  # the oldest unused ticket lapses
        ticket = Ticket(filename, size, content_type, cdn_name(filename, content_type))
        self._tickets[ticket_id] = ticket
        return {
            "upload": {
                "method": "PUT",
                "url": f"{base_url}/uploads/{ticket_id}",
                "headers": {"Content-Type": content_type},
            },
            "download_url": f"{base_url}/cdn/{ticket.name}",
        }

    def put(self, ticket_id: str, data: bytes) -> bool:
        """Store a ticket's bytes (the ticket is used up); False for an unknown ticket."""
        ticket = self._tickets.get(ticket_id)
        if ticket is None:
            return False
        if len(data) != ticket.size:
            raise UploadRejected(f"the body is {len(data)} bytes; the ticket was opened for {ticket.size}")
        del self._tickets[ticket_id]
        self._keep_file(ticket.name, data, ticket.content_type, UPLOAD_TTL_S)
        return True

    def binary(self, filename: str, content_type: str | None, data: bytes, base_url: str) -> dict[str, Any]:
        """The `data` of a `/media/upload/binary` answer; raises `UploadRejected`."""
        if not data:
            raise UploadRejected("file is empty")
        if len(data) > MAX_UPLOAD_BYTES:
            raise UploadRejected(f"file is larger than {MAX_UPLOAD_BYTES} bytes")
        media_type = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        kind = kind_of(media_type)
        name = cdn_name(filename, media_type)
        self._keep_file(name, data, media_type, UPLOAD_TTL_S)
        return {"type": kind, "download_url": f"{base_url}/cdn/{name}", "filename": filename, "size": len(data)}
