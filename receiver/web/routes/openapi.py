"""`GET /openapi.json`: the OpenAPI 3.1 document of this server's API (no bearer token: it holds no data)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from receiver.web.openapi import build_document
from receiver.web.operations import Operation, Reply
from receiver.web.routes.common import services


async def get_openapi(request: Request) -> Response:
    """The document, built on first request and kept on the app (the schema generation is not free)."""
    state = request.app.state
    body: bytes | None = getattr(state, "openapi_json", None)
    if body is None:
        settings = services(request).settings
        operations = state.operations  # the table the app was made from
        document = build_document(operations, public_url=settings.public_url, max_body_bytes=settings.max_body_bytes)
        body = state.openapi_json = json.dumps(document, separators=(",", ":")).encode()
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-cache"})


operations = [
    Operation(
        "GET",
        "/openapi.json",
        get_openapi,
        summary="This document",
        tag="meta",
        ok=Reply(200, "OpenAPI 3.1.", media={"application/json": {"schema": {"type": "object"}}}),
        public=True,
    )
]
