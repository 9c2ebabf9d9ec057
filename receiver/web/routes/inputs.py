"""`GET /inputs/{key}`: input images we serve to providers that can only fetch URLs (unguessable keys)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from receiver.web.operations import Operation, Param, Reply
from receiver.web.routes.common import services
from receiver.web.routes.images import IMAGES

INPUT_KEY = {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"}  # secrets.token_urlsafe(32)


async def get_input(request: Request) -> Response:
    svc = services(request)
    content_type, data = await svc.store.select_input(request.path_params["key"])
    headers = {"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type=content_type, headers=headers)


operations = [
    Operation(
        "GET",
        "/inputs/{key}",
        get_input,
        summary="An input image we serve to a provider",
        tag="webhooks",
        ok=Reply(200, "The image bytes.", media=IMAGES),
        errors=(404,),
        params=(Param("path", "key", INPUT_KEY, "The unguessable key of a job's input URL."),),
        public=True,
    )
]
