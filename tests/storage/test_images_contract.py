"""Storage contract, images: stored images, a job's image links and status, served inputs, and what a
purge of a job's images removes.

Every test runs against each backend (`database`), through the stores and the `Database` API only.
"""

from __future__ import annotations

from receiver.storage import images, jobs, retention
from receiver.storage.base import Database, Transaction
from tests.helpers.storage_rows import insert_job

NOW = 1_000.0


def add_image(tx: Transaction, sha256: str, *, thumbnail: str | None = None, width: int = 8) -> None:
    images.upsert_image(
        tx, sha256, content_type="image/png", width=width, height=6, bytes=120, thumbnail_sha256=thumbnail, now=NOW
    )


def link(
    tx: Transaction, job_id: str, role: str, position: int, sha256: str | None, *, error: str | None = None
) -> None:
    images.upsert_job_image(
        tx, job_id, role=role, position=position, sha256=sha256, source_url=f"https://src/{position}", error=error,
        now=NOW,
    )  # fmt: skip


async def test_an_image_is_stored_once_with_its_first_facts(database: Database) -> None:
    """Upserting the same sha256 again keeps the first row; an unknown sha256 reads None."""

    def write(tx: Transaction) -> None:
        add_image(tx, "a" * 64, thumbnail="t" * 64, width=8)
        add_image(tx, "a" * 64, thumbnail=None, width=999)

    await database.write(write)
    row = await images.read_image(database, "a" * 64)
    assert row is not None and (row["content_type"], row["thumbnail_sha256"]) == ("image/png", "t" * 64)
    assert await images.read_image(database, "b" * 64) is None


async def test_job_images_are_links_replaced_in_place_and_listed_outputs_first(database: Database) -> None:
    """A job's image at (role, position) is replaced by a later upsert; the list joins each stored image's
    facts, outputs by position then the input; a link without an image carries its error."""

    def write(tx: Transaction) -> None:
        insert_job(tx, "job_1", now=NOW)
        add_image(tx, "a" * 64, thumbnail="t" * 64)
        add_image(tx, "b" * 64)
        link(tx, "job_1", "input", 0, "b" * 64)
        link(tx, "job_1", "output", 1, None, error="fetch failed")
        link(tx, "job_1", "output", 0, None, error="first try failed")
        link(tx, "job_1", "output", 0, "a" * 64)

    await database.write(write)
    rows = await images.read_job_images(database, "job_1")
    assert [(row["role"], row["position"], row["sha256"], row["error"]) for row in rows] == [
        ("output", 0, "a" * 64, None),
        ("output", 1, None, "fetch failed"),
        ("input", 0, "b" * 64, None),
    ]
    first = rows[0]
    assert (first["content_type"], first["width"], first["height"], first["bytes"], first["thumbnail_sha256"]) == (
        "image/png", 8, 6, 120, "t" * 64
    )  # fmt: skip
    assert (rows[1]["content_type"], rows[1]["source_url"]) == (None, "https://src/1")
    assert await database.write(lambda tx: images.list_job_images(tx, "job_1")) == rows
    assert await images.read_job_images(database, "job_2") == []


async def test_the_image_status_of_a_job_is_set_when_its_copy_is_over(database: Database) -> None:
    """`set_images_done` records the outcome (and error) on the job."""

    def write(tx: Transaction) -> None:
        insert_job(tx, "job_1", now=NOW)
        images.set_images_done(tx, "job_1", status="failed", error="image 0: gone", now=NOW + 5)

    await database.write(write)
    job = await database.write(lambda tx: jobs.get(tx, "job_1"))
    assert (job.images_status, job.images_error) == ("failed", "image 0: gone")


async def test_purging_a_jobs_image_links_frees_only_images_no_one_else_uses(database: Database) -> None:
    """Deleting a job's links returns the images they named; of those only the ones no other job links
    are deleted (with their thumbnails' names), and a blob stays in use while any image names it."""
    own, shared, thumb = "a" * 64, "b" * 64, "t" * 64

    def setup(tx: Transaction) -> None:
        insert_job(tx, "job_gone", now=NOW)
        insert_job(tx, "job_kept", now=NOW)
        add_image(tx, own, thumbnail=thumb)
        add_image(tx, shared)
        link(tx, "job_gone", "output", 0, own)
        link(tx, "job_gone", "output", 1, shared)
        link(tx, "job_gone", "output", 2, None, error="never fetched")
        link(tx, "job_kept", "output", 0, shared)

    await database.write(setup)
    only = await database.write(lambda tx: retention.images_only_of_jobs(tx, ["job_gone"]))
    assert [(row["sha256"], row["thumbnail_sha256"]) for row in only] == [(own, thumb)]
    assert await database.write(lambda tx: retention.blob_users(tx, thumb)) == [own]

    def purge(tx: Transaction) -> list[tuple[str, str | None]]:
        keys = retention.rows_of_jobs(tx, "job_images", ["job_gone"], limit=None)
        assert len(keys) == 3
        named = retention.delete_job_images(tx, keys)
        assert named == {own, shared}
        return [(row["sha256"], row["thumbnail_sha256"]) for row in retention.delete_unused_images(tx, sorted(named))]

    assert await database.write(purge) == [(own, thumb)]
    assert await retention.blob_in_use(database, own) is False
    assert await retention.blob_in_use(database, thumb) is False
    assert await retention.blob_in_use(database, shared) is True
    assert [row["sha256"] for row in await images.read_job_images(database, "job_kept")] == [shared]
    assert await images.read_job_images(database, "job_gone") == []
