"""`GET /openapi.json`: the OpenAPI 3.1 document of this server's API (no bearer token: it holds no data)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.web.openapi import build_document
from receiver.wiring import Services


async def get_openapi(request: Request) -> Response:
    """The document, built on first request and kept on the app (the schema generation is not free)."""
    state = request.app.state
    body: bytes | None = getattr(state, "openapi_json", None)
    if body is None:
        svc: Services = state.services
        document = build_document(public_url=svc.settings.public_url, max_body_bytes=svc.settings.max_body_bytes)
        body = state.openapi_json = json.dumps(document, separators=(",", ":")).encode()
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-cache"})


routes = [Route("/openapi.json", get_openapi, methods=["GET"])]
