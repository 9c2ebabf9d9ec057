"""Stored images, which job holds which (`job_images`) and a job's image status.

Functions taking a `Transaction` run inside a caller's transaction body; the `async` ones read through the
`Database` (see `receiver.storage.base`). The bytes live in the blob store (`receiver.images.blobs`); these
rows describe them.
"""

from __future__ import annotations

from receiver.storage.base import Database, Row, Transaction


def upsert_image(
    tx: Transaction,
    sha256: str,
    *,
    content_type: str,
    width: int,
    height: int,
    bytes: int,
    thumbnail_sha256: str | None,
    now: float,
) -> None:
    """Describe a stored blob; an image stored already keeps its row (the same bytes, the same facts)."""
    tx.execute(
        "upsert_image",
        sha256=sha256,
        content_type=content_type,
        width=width,
        height=height,
        bytes=bytes,
        thumbnail_sha256=thumbnail_sha256,
        now=now,
    )


def upsert_job_image(
    tx: Transaction,
    job_id: str,
    *,
    role: str,
    position: int,
    sha256: str | None,
    source_url: str | None,
    error: str | None,
    now: float,
) -> None:
    """A job's `role` ('input' or 'output') image at `position`: our copy (`sha256`) or why there is none."""
    tx.execute(
        "upsert_job_image",
        job_id=job_id,
        role=role,
        position=position,
        sha256=sha256,
        source_url=source_url,
        error=error,
        now=now,
    )


def set_images_done(tx: Transaction, job_id: str, *, status: str, error: str | None, now: float) -> None:
    """The job's image copy is over: `status` 'stored' or 'failed' (with `error`)."""
    tx.execute("set_images_done", id=job_id, images_status=status, images_error=error, now=now)


def list_job_images(tx: Transaction, job_id: str) -> list[Row]:
    """A job's images, outputs by position then its input, each joined with its stored image's facts
    (role, position, sha256, source_url, error, content_type, width, height, bytes, thumbnail_sha256)."""
    return tx.all("list_job_images", job_id=job_id)


async def read_job_images(db: Database, job_id: str) -> list[Row]:
    """`list_job_images` as a read."""
    return await db.all("list_job_images", job_id=job_id)


async def read_image(db: Database, sha256: str) -> Row | None:
    """A stored image's content_type and thumbnail_sha256, or None."""
    return await db.one("select_image", sha256=sha256)


def set_thumbnail(tx: Transaction, sha256: str, *, thumbnail_sha256: str) -> bool:
    """Name a stored image's thumbnail, made when first asked for; False when it has one already (the first
    stays) or is gone."""
    return tx.execute("set_image_thumbnail", sha256=sha256, thumbnail_sha256=thumbnail_sha256) == 1
