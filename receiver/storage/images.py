"""The images and job_images tables: every query on them.

The `async` functions read through the `Database`; see `receiver.storage.base`.
"""

from __future__ import annotations

from receiver.storage.base import Database, Row


async def read_job_images(db: Database, job_id: str) -> list[Row]:
    """A job's image links with their stored image's facts (role, position, sha256, source_url, error,
    content_type, width, height, bytes, thumbnail_sha256): outputs in order, then the input."""
    return await db.all("list_job_images", job_id=job_id)
