"""How a stored image (a `job_images` row joined with its `images` row) is shown in the API and in events."""

from __future__ import annotations

from typing import Any

from receiver.models import RowLike


def image_view(row: RowLike, public_url: str) -> dict[str, Any]:
    sha = row["sha256"]
    return {
        "sha256": sha,
        "url": f"{public_url}/v1/images/{sha}" if sha else None,
        "thumbnail_url": f"{public_url}/v1/images/{sha}?thumbnail=1" if sha else None,  # made when first asked for
        "content_type": row["content_type"],
        "width": row["width"],
        "height": row["height"],
        "bytes": row["bytes"],
        "source_url": row["source_url"] if not str(row["source_url"] or "").startswith("data:") else "(inline)",
        "error": row["error"],
    }
