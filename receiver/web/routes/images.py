"""`GET /v1/images/{sha256}`: the images we stored (no bearer token: the hash is the capability)."""

from __future__ import annotations

import re
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from receiver.errors import NotFoundError
from receiver.images.blobs import CHUNK_BYTES, PresigningStore
from receiver.images.thumbnails import thumbnail_key
from receiver.storage import images
from receiver.web.operations import TEXT, Header, Operation, Param, Reply
from receiver.web.routes.common import services

SHA256 = re.compile(r"^[0-9a-f]{64}$")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
IMAGES = {media: {"schema": {"type": "string", "contentMediaType": media}} for media in IMAGE_TYPES}
IMMUTABLE = "public, max-age=31536000, immutable"


async def get_image(request: Request) -> Response:
    """Stored image bytes (content-addressed, so cacheable forever); `?thumbnail=1` for the WebP thumbnail.
    Streamed from the blob store piece by piece, or, with `RECEIVER_BLOB_REDIRECT` on S3, a 307 redirect to a
    presigned URL of the object (see the operation's description for why 307)."""
    svc = services(request)
    sha = request.path_params["sha256"]
    if not SHA256.match(sha):
        raise NotFoundError("no such image")
    row = await images.read_image(svc.db, sha)
    if row is None:
        raise NotFoundError("no such image")
    content_type, key = row["content_type"], sha
    if request.query_params.get("thumbnail"):
        # Made when first asked for (receiver.images.thumbnails); the image itself if it cannot be made.
        max_pixels = svc.settings.fetch_max_pixels
        thumbnail = row["thumbnail_sha256"] or await thumbnail_key(svc.db, svc.blobs, sha, max_pixels=max_pixels)
        if thumbnail:
            content_type, key = "image/webp", thumbnail
    headers = {"Cache-Control": IMMUTABLE, "ETag": f'"{key}"', "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == f'"{key}"':
        return Response(status_code=304, headers=headers)
    method: Literal["GET", "HEAD"] = "HEAD" if request.method == "HEAD" else "GET"
    if svc.settings.blob_redirect and isinstance(svc.blobs, PresigningStore):
        ttl_s = svc.settings.blob_redirect_ttl_s
        url = await svc.blobs.presigned_url(key, method=method, ttl_s=ttl_s)
        # A browser may reuse the redirect while the URL has at least half its life left.
        cache = f"private, max-age={int(ttl_s // 2)}"
        return Response(status_code=307, headers={"Location": url, "Cache-Control": cache})
    if method == "HEAD":  # the size only: no body is read from the store
        size = await svc.blobs.size(key)
        if size is None:
            raise NotFoundError("image bytes are missing from the blob store")
        return Response(media_type=content_type, headers={**headers, "Content-Length": str(size)})
    blob = await svc.blobs.open(key)
    if blob is None:
        raise NotFoundError("image bytes are missing from the blob store")
    if blob.size <= CHUNK_BYTES:  # a thumbnail: one piece, without a streamed answer's extra task
        return Response(b"".join([piece async for piece in blob.chunks]), media_type=content_type, headers=headers)
    # Content-Length is the blob's: a client can tell a transfer cut short by a store failure mid-way.
    headers["Content-Length"] = str(blob.size)
    return StreamingResponse(blob.chunks, media_type=content_type, headers=headers)


operations = [
    Operation(
        "GET",
        "/v1/images/{sha256}",
        get_image,
        summary="Stored image bytes",
        tag="images",
        ok=Reply(
            200,
            "The image, cacheable forever.",
            media=IMAGES,
            headers=(
                Header("ETag", "The image's hash, quoted."),
                Header("Cache-Control", "`public, max-age=31536000, immutable`"),
                Header("Content-Length", "The image's size in bytes."),
            ),
        ),
        more=(
            Reply(
                307,
                "With `RECEIVER_BLOB_REDIRECT=true` (S3 storage): the image is at `Location`, a presigned URL of "
                "the object that expires after `RECEIVER_BLOB_REDIRECT_TTL_S` seconds. Ask here again for a fresh "
                "one.",
                headers=(
                    Header("Location", "The presigned URL, signed for this request's method (GET or HEAD)."),
                    Header("Cache-Control", "`private, max-age=` half the URL's lifetime."),
                ),
            ),
            Reply(304, "`If-None-Match` matches the `ETag`: the copy the client holds is it."),
        ),
        errors=(404, 503),
        params=(
            Param("path", "sha256", {"type": "string", "pattern": SHA256.pattern}, "The image's SHA-256 (hex)."),
            Param("query", "thumbnail", TEXT, "Any non-empty value: the WebP thumbnail (made on the first request)."),
            Param("header", "If-None-Match", TEXT, "The `ETag` of a copy the client holds."),
        ),
        public=True,
        description="No bearer token: the hash is the capability (chat services fetch these images). The bytes "
        "are streamed from the blob store; 503 `blob_store_unavailable` when it cannot be read. With "
        "`RECEIVER_BLOB_REDIRECT=true` the answer is a 307 to a presigned URL instead: 307 rather than 302 "
        "because it promises the method is kept (the URL is signed for GET or HEAD, whichever was asked) and "
        "says the target is temporary; clients that follow 302 follow 307 alike.",
    )
]
