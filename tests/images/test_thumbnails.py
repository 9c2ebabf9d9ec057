"""Thumbnails made when first asked for, over real HTTP: the image copy stores none, the first request makes,
stores and names it, later ones serve the stored one."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
from PIL import Image

from tests.helpers.database import read_rows
from tests.helpers.stack import StackFactory


def blob_files(root: Path) -> set[str]:
    return {path.name for path in root.rglob("*") if path.is_file() and not path.name.startswith(".")}


async def test_a_thumbnail_is_made_on_first_request_then_served_as_stored(make_stack: StackFactory) -> None:
    """After the copy the image row names no thumbnail; the first `?thumbnail=1` answers a WebP of at most
    256 px and stores it once under its hash, named on the row; the second serves those same bytes."""
    stack = await make_stack()
    job = await stack.create_job()
    final = await stack.wait_for(job["id"], lambda view: view["images_status"] == "stored")
    [image] = final["images"]
    db_path = stack.services.db.path
    [row] = await read_rows(db_path, "SELECT thumbnail_sha256 FROM images WHERE sha256 = ?", image["sha256"])
    assert row["thumbnail_sha256"] is None
    blobs_dir = stack.services.settings.blobs_dir
    before = blob_files(blobs_dir)

    async with httpx.AsyncClient() as http:
        first = await http.get(image["thumbnail_url"])
        assert first.status_code == 200 and first.headers["content-type"] == "image/webp"
        with Image.open(io.BytesIO(first.content)) as thumbnail:
            assert thumbnail.format == "WEBP" and max(thumbnail.size) <= 256
        [row] = await read_rows(db_path, "SELECT thumbnail_sha256 FROM images WHERE sha256 = ?", image["sha256"])
        key = row["thumbnail_sha256"]
        assert key is not None and first.headers["etag"] == f'"{key}"'
        assert blob_files(blobs_dir) - before == {key}

        second = await http.get(image["thumbnail_url"])
        assert second.status_code == 200 and second.content == first.content
        assert second.headers["etag"] == f'"{key}"'
    [row] = await read_rows(db_path, "SELECT thumbnail_sha256 FROM images WHERE sha256 = ?", image["sha256"])
    assert row["thumbnail_sha256"] == key
    assert blob_files(blobs_dir) - before == {key}
