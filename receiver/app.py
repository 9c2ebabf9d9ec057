"""The Starlette application: routes, error handlers and auth around the shared services."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route

from receiver.web.http import EXCEPTION_HANDLERS, BearerAuth, BodyGate, JSONResponse
from receiver.web.hygiene import RequestHygiene
from receiver.web.routes import inputs, jobs, openapi, pipeline, webhooks
from receiver.wiring import Services


async def healthz(request: Request) -> JSONResponse:
    svc: Services = request.app.state.services
    await svc.db.fetch_one("SELECT 1")
    return JSONResponse({"status": "ok"})


def create_app(services: Services) -> Starlette:
    """The web app. Workers are not started here: `receiver serve` runs them beside it."""
    settings = services.settings
    token = settings.api_token
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            *jobs.routes,
            *pipeline.routes,
            *webhooks.routes,
            *inputs.routes,
            *openapi.routes,
        ],
        middleware=[
            Middleware(RequestHygiene, public_url=settings.public_url, extra_hosts=settings.extra_allowed_hosts),
            # Auth first: a client without the token cannot hold one of BodyGate's few body buffers.
            Middleware(BearerAuth, token=token.get_secret_value() if token else None),
            Middleware(
                BodyGate,
                max_json_bytes=min(settings.max_json_bytes, settings.max_body_bytes),
                body_timeout_s=settings.body_timeout_s,
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.router.redirect_slashes = False  # never answer a webhook with a 3xx: providers do not follow them
    app.state.services = services
    return app
