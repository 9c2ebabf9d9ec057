"""Local emulators of the hosted image-edit APIs, served together by one Starlette app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.emulators.modelverse import ModelverseEmulator, ModelverseEmulatorConfig
from receiver.emulators.stepfun import StepFunEmulator, StepFunEmulatorConfig
from receiver.emulators.wavespeed import WaveSpeedEmulator, WaveSpeedEmulatorConfig

__all__ = [
    "Emulators",
    "FalEmulator",
    "FalEmulatorConfig",
    "ModelverseEmulator",
    "ModelverseEmulatorConfig",
    "StepFunEmulator",
    "StepFunEmulatorConfig",
    "WaveSpeedEmulator",
    "WaveSpeedEmulatorConfig",
    "create_emulator_app",
]
PREFIXES = ("fal", "fal-run", "wavespeed", "stepfun", "modelverse")


class Emulators:
    """One emulator per provider; each is mounted under `/{provider}`."""

    def __init__(
        self,
        *,
        fal: FalEmulator | None = None,
        wavespeed: WaveSpeedEmulator | None = None,
        stepfun: StepFunEmulator | None = None,
        modelverse: ModelverseEmulator | None = None,
    ) -> None:
        self.fal = fal if fal is not None else FalEmulator()
        self.wavespeed = wavespeed if wavespeed is not None else WaveSpeedEmulator()
        self.stepfun = stepfun if stepfun is not None else StepFunEmulator()
        self.modelverse = modelverse if modelverse is not None else ModelverseEmulator()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with (
            self.fal.running(),
            self.wavespeed.running(),
            self.stepfun.running(),
            self.modelverse.running(),
        ):
            yield

    async def aclose(self) -> None:
        for emulator in (self.fal, self.wavespeed, self.stepfun, self.modelverse):
            await emulator.aclose()


def create_emulator_app(
    *,
    fal: FalEmulator | None = None,
    wavespeed: WaveSpeedEmulator | None = None,
    stepfun: StepFunEmulator | None = None,
    modelverse: ModelverseEmulator | None = None,
    emulators: Emulators | None = None,
) -> Starlette:
    """Every emulator under its prefix (`/fal`, `/wavespeed`, `/stepfun`, `/modelverse`) plus `GET /healthz`;
    `/fal-run` is fal's synchronous host (fal.run), `/fal` its queue host (queue.fal.run).

    Starlette does not run a mounted app's lifespan, so this app's lifespan runs each emulator's.
    """
    group = emulators or Emulators(fal=fal, wavespeed=wavespeed, stepfun=stepfun, modelverse=modelverse)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "emulators": list(PREFIXES)})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with group.running():
            yield

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Mount("/fal", app=group.fal.app),
        Mount("/fal-run", app=group.fal.run_app),
        Mount("/wavespeed", app=group.wavespeed.app),
        Mount("/stepfun", app=group.stepfun.app),
        Mount("/modelverse", app=group.modelverse.app),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.emulators = group
    return app
