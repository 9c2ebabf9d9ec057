"""Thumbnails made when first asked for: the image copy stores only the checked image, and the first
`GET /v1/images/{sha256}?thumbnail=1` makes its WebP thumbnail, stores it and names it on the image's row.

Most thumbnails are never looked at (a job's notification carries the image URLs; the dashboard asks for a
page of them at a time), so the pipeline does not pay for them: decoding at reduced scale, resampling and
encoding a 256-pixel WebP cost about as much as the check itself on a large photo.
"""

from __future__ import annotations

import asyncio

from receiver.errors import GiveUpError
from receiver.images.blobs import BlobStore
from receiver.images.checks import make_thumbnail
from receiver.observability import metrics
from receiver.storage import images
from receiver.storage.base import Database


async def thumbnail_key(db: Database, blobs: BlobStore, sha256: str, *, max_pixels: int) -> str | None:
    """The key of the stored image `sha256`'s thumbnail, made and stored now; None when the image's bytes
    are gone or do not decode. Two first requests at once both make it: the same bytes under the same key,
    and the row keeps the first name written."""
    data = await blobs.get(sha256)
    if data is None:
        return None
    try:
        thumbnail = await asyncio.to_thread(make_thumbnail, data, max_pixels=max_pixels)
    except GiveUpError:
        return None
    key = await blobs.put(thumbnail, content_type="image/webp")
    metrics.IMAGE_BYTES.labels("stored").inc(len(thumbnail))
    await db.write(lambda tx: images.set_thumbnail(tx, sha256, thumbnail_sha256=key))
    return key
