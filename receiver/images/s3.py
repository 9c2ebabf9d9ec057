"""`S3BlobStore`: the blob store in an S3-compatible bucket (`RECEIVER_BLOB_URL=s3://bucket/prefix`).

The client is obstore (Python bindings of the Rust `object_store` crate that Apache Arrow and DataFusion
use): one wheel with no Python dependencies, imported only when S3 is configured (measured here: 6-10 ms
and +4.7 MB resident), a native async API whose requests run on its own Rust runtime (the event loop only
awaits them), SigV4 signing and presigned URLs, streamed reads, retries with backoff, and AWS's credential
chain (static keys, web identity, container and instance credentials). boto3 is synchronous (a thread per
call) and its first S3 client costs ~0.9 s and +40 MB resident here (botocore's service models);
aiobotocore carries the same botocore, with a pure-Python request path, for the five calls used here.

Layout: the blob of `<sha256>` is the object `prefix/ab/cd/<sha256>`, as on disk. What the store promises:
- A blob is visible only once complete. Each blob is one single-request PUT (never a multipart upload,
  whose abandoned parts would linger unseen), which S3 applies atomically; the request carries the body's
  SHA-256 in its signature (`x-amz-content-sha256`), so S3 refuses a body that arrives cut short or changed.
  A PUT that fails leaves no object, and the caller (a `fetch_images` task) retries.
- Write-once by content: `put` first asks (HEAD) whether the blob is there. Present and written in the last
  `BLOB_REFRESH_S`: nothing to do. Present but older: the same bytes are written again, which atomically
  replaces the object with an identical one and restarts its age, as a local store touches its file (see
  `BLOB_REFRESH_S`). A plain PUT after the HEAD, rather than a conditional `If-None-Match: *` PUT, works on
  every S3-compatible store; two writers racing on new bytes write the same object twice, harmlessly.
- `delete(min_age_s=...)` compares the object's `Last-Modified` with the store's clock.

Endpoint, region and credentials come from the settings (AWS's own variable names, `receiver.settings`); what
they leave unset, obstore takes from the environment and AWS's credential chain. An `http://` endpoint (a
MinIO or moto on loopback or a private network) is allowed exactly when one is configured: plain HTTP is
never used for AWS's own endpoints. Credentials never appear in this store's repr, its errors or its logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import S3Store

from receiver.errors import RetryLaterError
from receiver.images.blobs import BLOB_REFRESH_S, CHUNK_BYTES, BlobStream, blob_key

if TYPE_CHECKING:
    from obstore import ObjectMeta
    from obstore.store import ClientConfig, RetryConfig, S3Config

# Retries inside one store call (connection failures, 5xx): a few quick ones, well inside a task's lease;
# the task runner's own backoff takes over after that.
MAX_RETRIES = 3
RETRY_TIMEOUT_S = 30.0
# One request, body included: long enough to upload the largest image (RECEIVER_FETCH_MAX_BYTES) or to stream
# one to a slow client, which reads it at its own pace.
REQUEST_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 10.0
HASH_IN_THREAD_BYTES = 1024 * 1024  # hashing more than this would hold the event loop for a millisecond or more
_ERRORS = (ObstoreError, OSError)


class S3BlobStore:
    """Blobs as objects `prefix/ab/cd/<sha256>` in an S3 bucket (see the module docstring for the guarantees)."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        clock: Callable[[], float] = time.time,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.clock = clock
        config: S3Config = {}
        if endpoint is not None:
            config["endpoint"] = endpoint
        if region is not None:
            config["region"] = region
        if access_key_id is not None:
            config["access_key_id"] = access_key_id
        if secret_access_key is not None:
            config["secret_access_key"] = secret_access_key
        if session_token is not None:
            config["session_token"] = session_token
        client: ClientConfig = {
            "timeout": timedelta(seconds=REQUEST_TIMEOUT_S),
            "connect_timeout": timedelta(seconds=CONNECT_TIMEOUT_S),
        }
        if endpoint is not None and endpoint.startswith("http://"):
            client["allow_http"] = True
        retry: RetryConfig = {"max_retries": max_retries, "retry_timeout": timedelta(seconds=RETRY_TIMEOUT_S)}
        self._store = S3Store(
            bucket, prefix=self.prefix or None, config=config, client_options=client, retry_config=retry
        )

    def __repr__(self) -> str:
        # Never the client's config: it holds the secret key and the session token.
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.endpoint!r})"

    def path_hint(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self._key(sha256)}"

    async def put(self, data: bytes, *, content_type: str | None = None) -> str:
        if len(data) > HASH_IN_THREAD_BYTES:
            digest = await asyncio.to_thread(_sha256, data)
        else:
            digest = _sha256(data)
        meta = await self._head(digest)
        if meta is not None and self._age_s(meta) < BLOB_REFRESH_S:
            return digest
        attributes = {"Cache-Control": "public, max-age=31536000, immutable"}
        if content_type is not None:
            attributes["Content-Type"] = content_type
        try:
            await obstore.put_async(self._store, blob_key(digest), data, attributes=attributes, use_multipart=False)
        except _ERRORS as exc:
            raise _unavailable("store", digest, exc) from exc
        return digest

    async def get(self, sha256: str) -> bytes | None:
        key = blob_key(sha256)
        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            return None
        except _ERRORS as exc:
            raise _unavailable("read", sha256, exc) from exc

    async def open(self, sha256: str) -> BlobStream | None:
        key = blob_key(sha256)
        try:
            result = await obstore.get_async(self._store, key)
        except FileNotFoundError:
            return None
        except _ERRORS as exc:
            raise _unavailable("read", sha256, exc) from exc
        return BlobStream(result.meta["size"], _pieces(result.stream(min_chunk_size=CHUNK_BYTES), sha256))

    async def size(self, sha256: str) -> int | None:
        meta = await self._head(sha256)
        return None if meta is None else meta["size"]

    async def exists(self, sha256: str) -> bool:
        return await self._head(sha256) is not None

    async def delete(self, sha256: str, *, min_age_s: float = 0.0) -> bool:
        """Remove the blob under `sha256` (retention) unless it was (re)written in the last `min_age_s`;
        False when nothing was removed."""
        meta = await self._head(sha256)
        if meta is None or self._age_s(meta) < min_age_s:
            return False
        try:
            await obstore.delete_async(self._store, blob_key(sha256))
        except _ERRORS as exc:
            raise _unavailable("delete", sha256, exc) from exc
        return True

    async def presigned_url(self, sha256: str, *, method: Literal["GET", "HEAD"], ttl_s: float) -> str:
        expires_in = timedelta(seconds=max(1, math.ceil(ttl_s)))  # S3 counts whole seconds
        try:
            return await obstore.sign_async(self._store, method, blob_key(sha256), expires_in)
        except _ERRORS as exc:
            raise _unavailable("sign a URL for", sha256, exc) from exc

    def _key(self, sha256: str) -> str:
        key = blob_key(sha256)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _head(self, sha256: str) -> ObjectMeta | None:
        try:
            return await obstore.head_async(self._store, blob_key(sha256))
        except FileNotFoundError:
            return None
        except _ERRORS as exc:
            raise _unavailable("look up", sha256, exc) from exc

    def _age_s(self, meta: ObjectMeta) -> float:
        return self.clock() - meta["last_modified"].timestamp()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _pieces(stream: AsyncIterator[bytes], sha256: str) -> AsyncIterator[bytes]:
    try:
        async for piece in stream:
            yield bytes(piece)
    except _ERRORS as exc:
        raise _unavailable("read", sha256, exc) from exc


def _unavailable(action: str, sha256: str, exc: BaseException) -> RetryLaterError:
    """The store's failure, for logs and job errors: the kind and the first line of obstore's message (which
    names the request's method, URL without query and status, never a credential)."""
    first_line = (str(exc).splitlines() or [""])[0][:300]
    return RetryLaterError(
        f"the S3 blob store could not {action} blob {sha256[:12]}: {type(exc).__name__}: {first_line}",
        code="blob_store_unavailable",
    )
