"""A job as one row of the jobs list: what the page renders and what the live feed sends, from one place."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from receiver.models import RowLike

SHA256 = re.compile(r"[0-9a-f]{64}")
METADATA_CHARS = 200  # the metadata a row shows (the job page shows it whole)
ERROR_CHARS = 300


def image_url(sha256: str | None, *, thumbnail: bool = False) -> str | None:
    """The path of a stored image (`/v1/images/...`: no token needed, the hash is the capability)."""
    if sha256 is None or not SHA256.fullmatch(sha256):
        return None
    return f"/v1/images/{sha256}" + ("?thumbnail=1" if thumbnail else "")


def error_text(error: Any) -> str | None:
    """A job's stored error (a JSON object, usually with `message`) as one line of text."""
    if error is None:
        return None
    if isinstance(error, str):
        try:
            error = json.loads(error)
        except ValueError:
            return str(error[:ERROR_CHARS])
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or error.get("code")
        if message is not None:
            return str(message)[:ERROR_CHARS]
    return json.dumps(error, ensure_ascii=False)[:ERROR_CHARS]


def metadata_text(metadata: Any) -> str | None:
    """Metadata as `key=value` pairs, shortened for a table cell."""
    if metadata is None:
        return None
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    if isinstance(metadata, dict):
        text = " · ".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in metadata.items())
    else:
        text = json.dumps(metadata, ensure_ascii=False)
    return text if len(text) <= METADATA_CHARS else text[: METADATA_CHARS - 1] + "…"


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    status: str
    provider: str
    model: str
    prompt: str | None
    metadata: str | None
    error: str | None
    created_at: float
    completed_at: float | None
    updated_at: float
    input_sha256: str | None
    output_sha256: str | None

    @classmethod
    def from_row(cls, row: RowLike) -> JobRow:
        prompt = row["prompt"]
        return cls(
            id=row["id"],
            status=row["status"],
            provider=row["provider"],
            model=row["model"],
            prompt=None if prompt is None else str(prompt),
            metadata=metadata_text(row["metadata"]),
            error=error_text(row["error"]),
            created_at=row["created_at"],
            completed_at=row["completed_at"],
            updated_at=row["updated_at"],
            input_sha256=row["input_sha256"],
            output_sha256=row["output_sha256"],
        )

    @property
    def duration_s(self) -> float | None:
        """Created to final (None while the job runs)."""
        return None if self.completed_at is None else self.completed_at - self.created_at

    @property
    def href(self) -> str:
        return f"/jobs/{self.id}"

    @property
    def input_url(self) -> str | None:
        return image_url(self.input_sha256)

    @property
    def input_thumbnail(self) -> str | None:
        return image_url(self.input_sha256, thumbnail=True)

    @property
    def output_url(self) -> str | None:
        return image_url(self.output_sha256)

    @property
    def output_thumbnail(self) -> str | None:
        return image_url(self.output_sha256, thumbnail=True)

    def feed_item(self) -> dict[str, Any]:
        """The row as the live feed sends it (the page's script builds the same cells from it, as text)."""
        return {
            "id": self.id,
            "href": self.href,
            "status": self.status,
            "provider": self.provider,
            "model": self.model,
            "prompt": self.prompt,
            "metadata": self.metadata,
            "error": self.error,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "duration_s": self.duration_s,
            "updated_at": self.updated_at,
            "input_url": self.input_url,
            "input_thumbnail": self.input_thumbnail,
            "output_url": self.output_url,
            "output_thumbnail": self.output_thumbnail,
        }
