"""Local emulators of the hosted image-edit APIs, served together by one Starlette app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from receiver.emulators.fal import FalEmulator, FalEmulatorConfig

__all__ = ["FalEmulator", "FalEmulatorConfig", "create_emulator_app"]


def create_emulator_app(*, fal: FalEmulator | None = None) -> Starlette:
    """Every emulator under its prefix (`/fal`, ...) plus `GET /healthz`.

    Starlette does not run a mounted app's lifespan, so this app's lifespan runs each emulator's.
    """
    fal_emulator = fal if fal is not None else FalEmulator()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "emulators": ["fal"]})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with fal_emulator.running():
            yield

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Mount("/fal", app=fal_emulator.app),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
