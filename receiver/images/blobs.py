"""The content-addressed blob store for image bytes (sha256 keys), and storing a checked image with its thumbnail.

`LocalBlobStore` keeps a blob at `root/ab/cd/<sha256>`: written to a temporary file in that directory,
fsynced, renamed into place with `os.replace` and the directory fsynced, so a blob is either absent or
complete and durable, and concurrent writers of the same bytes simply race to the same result. Keys
are checked to be 64 lowercase hex digits before they touch a path. Blob files are 0600 and the
directories this store creates 0700, whatever the umask: only the service's own user reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from receiver.images.checks import THUMBNAIL_SIZE, inspect_image
from receiver.support.private_paths import make_private_dir

if TYPE_CHECKING:
    from receiver.settings import Settings

_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_sha256(value: str) -> str:
    """`value` if it is a sha256 hex digest in lowercase; ValueError otherwise (it is never used as a path)."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ValueError(f"not a lowercase sha256 hex digest: {str(value)[:80]!r}")
    return value


class BlobStore(Protocol):
    """Bytes by their sha256. Stores may also offer `path_hint(sha256) -> str` (where a blob lives) for logs."""

    async def put(self, data: bytes) -> str:
        """Store `data` and return its sha256 hex digest; storing the same bytes again is a no-op."""
        ...

    async def get(self, sha256: str) -> bytes | None:
        """The bytes stored under `sha256`, or None; ValueError when `sha256` is not a digest."""
        ...

    async def exists(self, sha256: str) -> bool:
        """Whether a blob is stored under `sha256`; ValueError when `sha256` is not a digest."""
        ...

    async def delete(self, sha256: str, *, min_age_s: float = 0.0) -> bool:
        """Remove the blob under `sha256` unless it was written less than `min_age_s` ago; whether it did."""
        ...


def blob_store_for(settings: Settings) -> BlobStore:
    """The blob store `RECEIVER_BLOB_URL` names (unset: the local directory `RECEIVER_DATA_DIR/blobs`)."""
    return LocalBlobStore(settings.blobs_dir)


class LocalBlobStore:
    """Blobs as files under `root` (created on first write); all file I/O runs in a worker thread."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_hint(self, sha256: str) -> str:
        return str(self._path(sha256))

    async def put(self, data: bytes) -> str:
        return await asyncio.to_thread(self._put, bytes(data))

    async def get(self, sha256: str) -> bytes | None:
        path = self._path(sha256)
        return await asyncio.to_thread(_read_or_none, path)

    async def exists(self, sha256: str) -> bool:
        path = self._path(sha256)
        return await asyncio.to_thread(path.is_file)

    async def delete(self, sha256: str, *, min_age_s: float = 0.0) -> bool:
        """Remove the blob under `sha256` (retention) unless it was (re)stored in the last `min_age_s`;
        False when nothing was removed."""
        path = self._path(sha256)
        return await asyncio.to_thread(_unlink_if_older, path, min_age_s)

    def _path(self, sha256: str) -> Path:
        digest = check_sha256(sha256)
        return self.root / digest[:2] / digest[2:4] / digest

    def _put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if path.is_file():
            # Same name, same bytes: nothing to write. The fresh mtime tells a retention purge racing
            # with this store that the blob is in use again (`delete(min_age_s=...)` leaves it).
            os.utime(path)
            return digest
        _make_dirs(path.parent)
        fd, temp_name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)  # mkstemp makes it 0600
        try:
            with os.fdopen(fd, "wb") as temp:
                temp.write(data)
                temp.flush()
                os.fsync(temp.fileno())
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        _fsync_dir(path.parent)
        return digest


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _unlink_if_older(path: Path, min_age_s: float) -> bool:
    try:
        if time.time() - path.stat().st_mtime < min_age_s:
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _make_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents (0700), fsyncing each parent that gained an entry."""
    missing = []
    current = directory
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for new in reversed(missing):
        make_private_dir(new)  # False when another writer made it first: fine
        _fsync_dir(new.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An image in the blob store: its key, checked facts, size in bytes, and its WebP thumbnail's key."""

    sha256: str
    content_type: str
    width: int
    height: int
    bytes: int
    thumbnail_sha256: str


async def store_image(
    blobs: BlobStore, data: bytes, *, max_pixels: int, thumbnail_size: int = THUMBNAIL_SIZE
) -> StoredImage:
    """Check `data` (PNG, JPEG or WebP, at most `max_pixels`; GiveUpError otherwise), then store it and
    its thumbnail. Nothing is stored for an image that fails the check; a retry after a crash between
    the two writes stores the same blobs again, which changes nothing."""
    facts, thumbnail = await asyncio.to_thread(
        inspect_image, data, max_pixels=max_pixels, thumbnail_size=thumbnail_size
    )
    sha256 = await blobs.put(data)
    thumbnail_sha256 = await blobs.put(thumbnail)
    return StoredImage(sha256, facts.content_type, facts.width, facts.height, len(data), thumbnail_sha256)
