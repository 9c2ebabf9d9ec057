"""A webhook endpoint on loopback that records every request: a subscriber for our deliveries, or the
receiver an emulator delivers its signed webhooks to."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from receiver.web.asgi_server import running_server
from tests.helpers.images import SAMPLE_PNG


class Hook(NamedTuple):
    """One request the endpoint recorded (unpacks as `path, headers, body`)."""

    path: str
    headers: httpx.Headers
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HookReceiver:
    """Records every request to any path (`hooks`) and answers from `answers` in order (a status code, or a whole
    Response), then `default_status`, all with empty bodies. A 3xx status redirects to `/elsewhere`, which is
    recorded like any path, so a followed redirect shows. `GET /sample.png` serves the sample image and
    `GET /missing.png` is a 404; neither is recorded."""

    default_status: int = 200
    base: str = ""
    hooks: list[Hook] = field(default_factory=list)
    answers: list[int | Response] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.base}/hook"

    @property
    def redirect_hits(self) -> int:
        """How many requests followed a redirect to `/elsewhere`."""
        return sum(1 for hook in self.hooks if hook.path == "/elsewhere")

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """The JSON bodies received, those of `event_type` only when given."""
        bodies = [hook.json for hook in self.hooks]
        return [body for body in bodies if event_type is None or body["type"] == event_type]

    def succeeded(self) -> set[str]:
        """The ids of the jobs whose `job.succeeded` event arrived."""
        return {event["data"]["job"]["id"] for event in self.events("job.succeeded")}

    def reset(self) -> None:
        self.hooks.clear()
        self.answers.clear()

    def app(self) -> Starlette:
        async def record(request: Request) -> Response:
            headers = httpx.Headers(list(request.headers.items()))
            self.hooks.append(Hook(request.url.path, headers, await request.body()))
            answer = self.answers.pop(0) if self.answers else self.default_status
            if isinstance(answer, Response):
                return answer
            if 300 <= answer < 400:
                return RedirectResponse(f"{self.base}/elsewhere", status_code=answer)
            return Response(status_code=answer)

        async def sample(request: Request) -> Response:
            return Response(SAMPLE_PNG.read_bytes(), media_type="image/png")

        async def missing(request: Request) -> Response:
            return Response(status_code=404)

        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        return Starlette(
            routes=[
                Route("/sample.png", sample, methods=["GET"]),
                Route("/missing.png", missing, methods=["GET"]),
                Route("/{path:path}", record, methods=methods),
            ]
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HookReceiver]:
        """Serve the endpoint on a loopback port (`base` set) for the block."""
        async with running_server(self.app()) as base:
            self.base = base
            yield self
