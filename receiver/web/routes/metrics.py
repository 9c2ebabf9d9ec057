"""`GET /metrics`: this process's Prometheus text (see `receiver.observability.metrics`). It takes the bearer
token unless `RECEIVER_METRICS_PUBLIC=true`; the task gauges are read from the database at scrape time."""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.observability import metrics
from receiver.web.asgi_server import running_server
from receiver.web.http import error_response
from receiver.web.hygiene import RequestHygiene
from receiver.web.operations import Operation, Reply
from receiver.web.routes.common import services
from receiver.wiring import Services

log = logging.getLogger(__name__)


def allowed(request: Request) -> bool:
    """Whether this request may read the metrics: public ones, no token configured, or the right bearer token."""
    settings = services(request).settings
    token = settings.api_token
    if settings.metrics_public or token is None:
        return True
    given = request.headers.get("authorization", "").encode()
    return hmac.compare_digest(given, f"Bearer {token.get_secret_value()}".encode())


async def get_metrics(request: Request) -> Response:
    if not allowed(request):
        return error_response(401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
    body = await metrics.render(services(request).db)
    return Response(body, media_type=metrics.CONTENT_TYPE, headers={"Cache-Control": "no-store"})


operations = [
    Operation(
        "GET",
        "/metrics",
        get_metrics,
        summary="Prometheus metrics of this process",
        tag="meta",
        ok=Reply(200, "Prometheus text exposition format.", media={"text/plain": {"schema": {"type": "string"}}}),
        description="Takes the bearer token unless `RECEIVER_METRICS_PUBLIC=true`. The `receiver_tasks_*` gauges "
        "are read from the database, the rest are this process's own: scrape every process.",
    )
]


def metrics_app(services: Services) -> Starlette:
    """An app answering `GET /metrics` only: a worker's listener (`RECEIVER_WORKER_METRICS_PORT`). Its `Host`
    is checked as the web app's is: a page's own name rebound to 127.0.0.1 cannot read a token-less worker's."""
    settings = services.settings
    hygiene = Middleware(RequestHygiene, public_url=settings.public_url, extra_hosts=settings.extra_allowed_hosts)
    app = Starlette(routes=[Route("/metrics", get_metrics, methods=["GET"])], middleware=[hygiene])
    app.state.services = services
    return app


@contextlib.asynccontextmanager
async def worker_metrics(services: Services) -> AsyncIterator[str | None]:
    """Serve `metrics_app` on the worker metrics address for the block, when a port is set; yields its URL."""
    settings = services.settings
    if settings.worker_metrics_port is None:
        yield None
        return
    app = metrics_app(services)
    async with running_server(app, host=settings.worker_metrics_host, port=settings.worker_metrics_port) as url:
        log.info("worker metrics on %s/metrics", url)
        yield url
