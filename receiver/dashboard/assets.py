"""The dashboard's own static files under `/ui/static/`: read once, named by a hash of their bytes.

Pages link `static_url(name)`, which carries the hash (`?v=...`): an answer to that exact URL is cacheable
forever, so a browser fetches each file once per release and never uses a stale one after an upgrade.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

MEDIA_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"  # a URL without the current hash: use a copy only after checking its ETag


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    version: str  # the first 12 hex digits of the bytes' SHA-256


def _load() -> dict[str, Asset]:
    assets = {}
    for entry in resources.files("receiver.dashboard").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in MEDIA_TYPES:
            body = entry.read_bytes()
            assets[entry.name] = Asset(body, MEDIA_TYPES[suffix], hashlib.sha256(body).hexdigest()[:12])
    return assets


ASSETS = _load()


def static_url(name: str) -> str:
    """The URL of a static file, versioned by its content."""
    return f"/ui/static/{name}?v={ASSETS[name].version}"


async def static_file(request: Request) -> Response:
    """A static file (no session needed: the login page uses them too, and nothing in them is private)."""
    asset = ASSETS.get(request.path_params["name"])
    if asset is None:
        return Response("not found\n", status_code=404, media_type="text/plain")
    etag = f'"{asset.version}"'
    cache = IMMUTABLE if request.query_params.get("v") == asset.version else REVALIDATE
    headers = {"Cache-Control": cache, "ETag": etag, "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    response = Response(body, media_type=asset.media_type, headers=headers)
    response.headers["Content-Length"] = str(len(asset.body))
    return response


ROUTES: list[BaseRoute] = [Route("/ui/static/{name}", static_file, methods=["GET", "HEAD"])]
