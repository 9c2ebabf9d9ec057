"""`GET /v1/images/{sha256}`: the images we stored (no bearer token: the hash is the capability)."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from receiver.errors import NotFoundError
from receiver.images.thumbnails import thumbnail_key
from receiver.storage import images
from receiver.web.operations import TEXT, Header, Operation, Param, Reply
from receiver.web.routes.common import services

SHA256 = re.compile(r"^[0-9a-f]{64}$")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
IMAGES = {media: {"schema": {"type": "string", "contentMediaType": media}} for media in IMAGE_TYPES}


async def get_image(request: Request) -> Response:
    """Stored image bytes (content-addressed, so cacheable forever); `?thumbnail=1` for the WebP thumbnail."""
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
    data = await svc.blobs.get(key)
    if data is None:
        raise NotFoundError("image bytes are missing from the blob store")
    headers = {
        "Cache-Control": "public, max-age=31536000, immutable",
        "ETag": f'"{key}"',
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == f'"{key}"':
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=content_type, headers=headers)


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
            ),
        ),
        more=(Reply(304, "`If-None-Match` matches the `ETag`: the copy the client holds is it."),),
        errors=(404,),
        params=(
            Param("path", "sha256", {"type": "string", "pattern": SHA256.pattern}, "The image's SHA-256 (hex)."),
            Param("query", "thumbnail", TEXT, "Any non-empty value: the WebP thumbnail (made on the first request)."),
            Param("header", "If-None-Match", TEXT, "The `ETag` of a copy the client holds."),
        ),
        public=True,
        description="No bearer token: the hash is the capability (chat services fetch these images).",
    )
]
