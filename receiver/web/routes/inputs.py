"""`GET /inputs/{key}`: input images we serve to providers that can only fetch URLs (unguessable keys)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.wiring import Services


async def get_input(request: Request) -> Response:
    svc: Services = request.app.state.services
    content_type, data = await svc.store.select_input(request.path_params["key"])
    headers = {"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type=content_type, headers=headers)


routes = [Route("/inputs/{key}", get_input, methods=["GET"])]
