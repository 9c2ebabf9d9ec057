"""The content-addressed blob store on disk, and storing a checked image with its thumbnail."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from receiver.errors import GiveUpError
from receiver.images.blobs import BlobStore, LocalBlobStore, StoredImage, check_sha256, store_image
from tests.helpers.files import mode_of
from tests.helpers.images import png_bytes


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


async def test_blobs_and_their_directories_are_owner_only(tmp_path: Path, umask: int) -> None:
    """Blob files are 0600 and every directory the store makes (root included) 0700, even under umask 0."""
    store = LocalBlobStore(tmp_path / "data" / "blobs")
    digest = await store.put(b"an image")
    blob = Path(store.path_hint(digest))
    assert mode_of(blob) == 0o600
    made = [blob.parent, blob.parent.parent, tmp_path / "data" / "blobs", tmp_path / "data"]
    assert [oct(mode_of(directory)) for directory in made] == ["0o700"] * 4


@pytest.mark.parametrize("data", [b"hello image", b"", bytes(range(256)) * 1000], ids=["small", "empty", "256kb"])
async def test_put_then_get_round_trips(store: LocalBlobStore, data: bytes) -> None:
    """What `put` stored, `get` returns, under the sha256 of the bytes."""
    digest = await store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert await store.get(digest) == data
    assert await store.exists(digest)


async def test_blobs_live_at_a_two_level_fan_out(store: LocalBlobStore) -> None:
    """A blob is the file root/ab/cd/<sha256>, which `path_hint` names; no temporary files remain."""
    digest = await store.put(b"fan out")
    expected = store.root / digest[:2] / digest[2:4] / digest
    assert files_under(store.root) == [expected]
    assert store.path_hint(digest) == str(expected)


async def test_put_is_idempotent(store: LocalBlobStore) -> None:
    """Storing the same bytes again (also concurrently) gives the same key and still one file."""
    first = await store.put(b"same bytes")
    again = await asyncio.gather(*(store.put(b"same bytes") for _ in range(8)))
    assert set(again) == {first}
    assert len(files_under(store.root)) == 1


async def test_concurrent_puts_of_different_bytes_all_land(store: LocalBlobStore) -> None:
    """Many writers at once: every blob is complete and nothing temporary is left behind."""
    payloads = [f"blob {n}".encode() * 1000 for n in range(20)]
    digests = await asyncio.gather(*(store.put(data) for data in payloads))
    assert [await store.get(digest) for digest in digests] == payloads
    assert len(files_under(store.root)) == 20


async def test_missing_blobs_are_none(store: LocalBlobStore) -> None:
    """An unknown (well-formed) key is absent: `get` is None, `exists` False."""
    digest = hashlib.sha256(b"never stored").hexdigest()
    assert await store.get(digest) is None
    assert not await store.exists(digest)


async def test_blobs_survive_a_new_store_object(tmp_path: Path) -> None:
    """A blob is on disk, not in the object: a fresh store on the same root reads it."""
    digest = await LocalBlobStore(tmp_path / "blobs").put(b"durable")
    assert await LocalBlobStore(tmp_path / "blobs").get(digest) == b"durable"


BAD_KEYS = [
    "",
    "../../etc/passwd",
    "../" + "a" * 61,
    "A" * 64,
    "g" * 64,
    "a" * 63,
    "a" * 65,
    "a" * 64 + "\n",
    "ab/cd/" + "a" * 58,
]
BAD_IDS = ["empty", "traversal", "traversal-64", "uppercase", "not-hex", "short", "long", "newline", "slashes"]


@pytest.mark.parametrize("key", BAD_KEYS, ids=BAD_IDS)
async def test_malformed_keys_are_refused(store: LocalBlobStore, key: str) -> None:
    """Anything but 64 lowercase hex digits is a ValueError for get, exists and path_hint: never a path."""
    with pytest.raises(ValueError, match="sha256"):
        await store.get(key)
    with pytest.raises(ValueError, match="sha256"):
        await store.exists(key)
    with pytest.raises(ValueError, match="sha256"):
        store.path_hint(key)
    with pytest.raises(ValueError, match="sha256"):
        check_sha256(key)
    assert not store.root.exists()


async def test_store_image_keeps_the_image_and_its_thumbnail(store: LocalBlobStore) -> None:
    """`store_image` checks the image, stores it and a WebP thumbnail, and reports both keys and the facts."""
    data = png_bytes(600, 400)
    blobs: BlobStore = store
    stored = await store_image(blobs, data, max_pixels=1_000_000, thumbnail_size=128)
    assert stored == StoredImage(
        sha256=hashlib.sha256(data).hexdigest(),
        content_type="image/png",
        width=600,
        height=400,
        bytes=len(data),
        thumbnail_sha256=stored.thumbnail_sha256,
    )
    assert await store.get(stored.sha256) == data
    thumbnail = await store.get(stored.thumbnail_sha256)
    assert thumbnail is not None
    with Image.open(io.BytesIO(thumbnail)) as image:
        assert (image.format, image.size) == ("WEBP", (128, 85))


async def test_store_image_is_idempotent(store: LocalBlobStore) -> None:
    """Storing the same image twice gives the same result and the same two files."""
    data = png_bytes(300, 300)
    first = await store_image(store, data, max_pixels=1_000_000)
    assert await store_image(store, data, max_pixels=1_000_000) == first
    assert len(files_under(store.root)) == 2


@pytest.mark.parametrize(
    ("data", "max_pixels", "code"),
    [(png_bytes(100, 100), 9_999, "too_many_pixels"), (b"not an image", 1_000_000, "not_an_image")],
    ids=["too-many-pixels", "not-an-image"],
)
async def test_store_image_stores_nothing_for_a_refused_image(
    store: LocalBlobStore, data: bytes, max_pixels: int, code: str
) -> None:
    """An image that fails the check gives up with its code and leaves the store untouched."""
    with pytest.raises(GiveUpError) as caught:
        await store_image(store, data, max_pixels=max_pixels)
    assert caught.value.code == code
    assert not store.root.exists()
