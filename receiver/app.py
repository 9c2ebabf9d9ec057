"""The Starlette application: the route table (every operation, which `/openapi.json` describes) and the
middleware around the shared services."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request

from receiver.dashboard import dashboard_routes
from receiver.observability.logs import RequestContext
from receiver.web.http import EXCEPTION_HANDLERS, BearerAuth, BodyGate, JSONResponse
from receiver.web.hygiene import RequestHygiene
from receiver.web.operations import Operation, Reply, routes
from receiver.web.routes import deliveries, images, inputs, jobs, metrics, openapi, stream, subscriptions, webhooks
from receiver.web.schemas import Health
from receiver.wiring import Services


async def healthz(request: Request) -> JSONResponse:
    svc: Services = request.app.state.services
    await svc.db.ping()
    return JSONResponse(Health(status="ok"))


HEALTHZ = Operation(
    "GET",
    "/healthz",
    healthz,
    summary="Liveness (checks the database)",
    tag="meta",
    ok=Reply(200, "Up.", Health),
    public=True,
)
OPERATIONS: tuple[Operation, ...] = (
    HEALTHZ,
    *metrics.operations,
    *openapi.operations,
    *jobs.operations,
    *images.operations,
    *subscriptions.operations,
    *deliveries.operations,
    *stream.operations,
    *inputs.operations,
    *webhooks.operations,
)


def create_app(services: Services) -> Starlette:
    """The web app. Workers are not started here: `receiver serve` runs them beside it."""
    settings = services.settings
    token = settings.api_token
    app = Starlette(
        routes=[*routes(OPERATIONS), *dashboard_routes()],
        middleware=[
            Middleware(RequestContext),  # a request id on every log line of the request
            Middleware(RequestHygiene, public_url=settings.public_url, extra_hosts=settings.extra_allowed_hosts),
            # Webhooks are answered here, before routing (see WebhookEdge); the rest goes on.
            Middleware(webhooks.WebhookEdge),
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
    app.state.operations = OPERATIONS
    return app
