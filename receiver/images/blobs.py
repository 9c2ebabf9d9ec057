"""The content-addressed blob store for image bytes (sha256 keys), and storing a checked image with its thumbnail.

Two stores keep the same layout, `ab/cd/<sha256>` under their root: `LocalBlobStore` (a directory, the
default) and `S3BlobStore` (`receiver.images.s3`, an S3-compatible bucket under a key prefix), chosen by
`RECEIVER_BLOB_URL` in `blob_store_for`. In both a blob is either absent or complete: a reader never sees
a half-written one. `store_image` returns only once both of its blobs are stored, and the image rows that
make an image servable are written after it returns (`receiver.images.fetch_images`).

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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from receiver.images.checks import THUMBNAIL_SIZE, inspect_image
from receiver.observability import metrics
from receiver.support.private_paths import make_private_dir

if TYPE_CHECKING:
    from receiver.settings import Settings

_SHA256 = re.compile(r"[0-9a-f]{64}")
CHUNK_BYTES = 1024 * 1024  # a served blob is read and sent in pieces of this size (its memory per response)
# An S3 store rewrites an existing blob it is asked to store again once its last write is older than this, so
# that a retention purge (which leaves blobs written in the last `receiver.jobs.retention.BLOB_GRACE_S`, twice
# this) never deletes a blob a job has just stored but not yet recorded. A local store touches the file instead.
BLOB_REFRESH_S = 1800.0


def check_sha256(value: str) -> str:
    """`value` if it is a sha256 hex digest in lowercase; ValueError otherwise (it is never used as a path)."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ValueError(f"not a lowercase sha256 hex digest: {str(value)[:80]!r}")
    return value


@dataclass(frozen=True, slots=True)
class BlobStream:
    """An open blob: its size in bytes, and its bytes in pieces, read as `chunks` is iterated (once)."""

    size: int
    chunks: AsyncIterator[bytes]


class BlobStore(Protocol):
    """Bytes by their sha256. Stores may also offer `path_hint(sha256) -> str` (where a blob lives) for logs.
    Every method raises ValueError when `sha256` is not a digest, and RetryLaterError (code
    `blob_store_unavailable`) when the store cannot be reached or refuses the request."""

    async def put(self, data: bytes, *, content_type: str | None = None) -> str:
        """Store `data` and return its sha256 hex digest; storing the same bytes again is a no-op. The blob is
        complete when this returns; before that, readers find no blob at all. `content_type` is kept where
        the store can serve the blob itself (S3's presigned URLs)."""
        ...

    async def get(self, sha256: str) -> bytes | None:
        """The bytes stored under `sha256`, or None."""
        ...

    async def open(self, sha256: str) -> BlobStream | None:
        """The blob under `sha256` to read piece by piece (a large image is never all in memory), or None."""
        ...

    async def size(self, sha256: str) -> int | None:
        """The size in bytes of the blob under `sha256`, or None when there is none."""
        ...

    async def exists(self, sha256: str) -> bool:
        """Whether a blob is stored under `sha256`."""
        ...

    async def delete(self, sha256: str, *, min_age_s: float = 0.0) -> bool:
        """Remove the blob under `sha256` unless it was written less than `min_age_s` ago; whether it did."""
        ...


@runtime_checkable
class PresigningStore(Protocol):
    """A store that can hand out short-lived URLs where a client reads a blob straight from the store."""

    async def presigned_url(self, sha256: str, *, method: Literal["GET", "HEAD"], ttl_s: float) -> str:
        """A URL valid for `ttl_s` seconds for a `method` request of the blob under `sha256` (which it does
        not check exists). The URL is a credential: never log it."""
        ...


def blob_store_for(settings: Settings) -> BlobStore:
    """The blob store `RECEIVER_BLOB_URL` names (unset: the local directory `RECEIVER_DATA_DIR/blobs`)."""
    location = settings.blob_location
    if isinstance(location, Path):
        return LocalBlobStore(location)
    from receiver.images.s3 import S3BlobStore  # imported only when used: obstore weighs ~5 MB

    secret = settings.aws_secret_access_key
    token = settings.aws_session_token
    return S3BlobStore(
        location.bucket,
        prefix=location.prefix,
        endpoint=settings.aws_endpoint_url,
        region=settings.aws_region,
        access_key_id=settings.aws_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
        session_token=token.get_secret_value() if token else None,
    )


def blob_key(sha256: str) -> str:
    """Where the blob of `sha256` lives under a store's root: `ab/cd/<sha256>`; ValueError for a non-digest."""
    digest = check_sha256(sha256)
    return f"{digest[:2]}/{digest[2:4]}/{digest}"


class LocalBlobStore:
    """Blobs as files under `root` (created on first write); all file I/O runs in a worker thread."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_hint(self, sha256: str) -> str:
        return str(self._path(sha256))

    def __repr__(self) -> str:
        return f"LocalBlobStore(root={str(self.root)!r})"

    async def put(self, data: bytes, *, content_type: str | None = None) -> str:
        return await asyncio.to_thread(self._put, bytes(data))

    async def get(self, sha256: str) -> bytes | None:
        path = self._path(sha256)
        return await asyncio.to_thread(_read_or_none, path)

    async def open(self, sha256: str) -> BlobStream | None:
        path = self._path(sha256)
        found = await asyncio.to_thread(_size_and_small_bytes, path)
        if found is None:
            return None
        size, data = found
        # A larger file is opened when its first piece is read: a stream never iterated leaves nothing open.
        return BlobStream(size, _one_piece(data) if data is not None else _read_pieces(path))

    async def size(self, sha256: str) -> int | None:
        path = self._path(sha256)
        return await asyncio.to_thread(_size_or_none, path)

    async def exists(self, sha256: str) -> bool:
        path = self._path(sha256)
        return await asyncio.to_thread(path.is_file)

    async def delete(self, sha256: str, *, min_age_s: float = 0.0) -> bool:
        """Remove the blob under `sha256` (retention) unless it was (re)stored in the last `min_age_s`;
        False when nothing was removed."""
        path = self._path(sha256)
        return await asyncio.to_thread(_unlink_if_older, path, min_age_s)

    def _path(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

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


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _size_and_small_bytes(path: Path) -> tuple[int, bytes | None] | None:
    """The file's size, and its bytes when it is one piece at most (a thumbnail: one thread hop); None when
    there is no file."""
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            return size, (file.read() if size <= CHUNK_BYTES else None)
    except FileNotFoundError:
        return None


async def _one_piece(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


async def _read_pieces(path: Path) -> AsyncIterator[bytes]:
    file = await asyncio.to_thread(path.open, "rb")
    try:
        while piece := await asyncio.to_thread(file.read, CHUNK_BYTES):
            yield piece
    finally:
        file.close()


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
    sha256 = await blobs.put(data, content_type=facts.content_type)
    thumbnail_sha256 = await blobs.put(thumbnail, content_type="image/webp")
    metrics.IMAGE_BYTES.labels("stored").inc(len(data) + len(thumbnail))
    return StoredImage(sha256, facts.content_type, facts.width, facts.height, len(data), thumbnail_sha256)
