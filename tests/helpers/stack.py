"""The receiver on real loopback HTTP wired to every emulator (also on loopback), with settings on a tmp dir."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.app import create_app
from receiver.emulators import (
    Emulators,
    ModelverseEmulator,
    ModelverseEmulatorConfig,
    StepFunEmulator,
    StepFunEmulatorConfig,
    WaveSpeedEmulator,
    WaveSpeedEmulatorConfig,
    create_emulator_app,
)
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.settings import Settings
from receiver.web.asgi_server import base_url, bind_socket, running_server
from receiver.wiring import Services, open_services
from tests.helpers.clock import Clock
from tests.helpers.database import Where, read_rows, where
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.provider_webhooks import SECRET_KEY, webhook_path

FAL_KEY = "test-fal-key"
FAST: dict[str, Any] = {"queue_s": 0.01, "inference_s": 0.02, "time_scale": 0.001}  # fal and WaveSpeed emulators
STEPX = "fal-ai/stepx-edit2"
STEP1X = "wavespeed-ai/step1x-edit"
# A module mark: its stacks (`make_stack`) run once on a SQLite file and once on a fresh PostgreSQL database.
ON_BOTH_BACKENDS = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings with the database and data dir in `tmp_path`, quick workers, loopback allowed; then `overrides`."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'receiver.db'}",
        "data_dir": tmp_path,
        "secret_key": SecretStr(SECRET_KEY.decode()),
        "fal_key": SecretStr(FAL_KEY),
        "task_poll_interval_s": 0.05,
        "reconcile_interval_s": 0.2,
        "jwks_refetch_interval_s": 0.0,
        # The emulators and test receivers live on loopback.
        "fetch_allow_private": True,
        "fetch_allowed_hosts": "127.0.0.1",
        "notify_allow_private": True,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class RecordingApp:
    """Wraps the emulators' app: records the method and path of every HTTP request, and while `gate` is clear
    holds the queue requests (not JWKS or CDN ones) whose method is in `hold`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.calls: list[tuple[str, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.hold = {"POST"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            self.calls.append((method, path))
            if method in self.hold and not path.startswith(("/fal/.well-known/", "/fal/cdn/", "/fal/_emulator/")):
                await self.gate.wait()
        await self.app(scope, receive, send)


@dataclass
class Stack:
    """The receiver (real app on loopback) wired to the emulators (also on loopback); `emulator` is fal's."""

    services: Services
    url: str
    emulator: FalEmulator
    emulator_url: str
    client: httpx.AsyncClient
    signing_key: Ed25519PrivateKey  # the key the fal emulator signs with (until a test rotates it)
    emulators: Emulators | None = None
    recorder: RecordingApp | None = None  # every request to the emulators
    app: Starlette | None = None  # the receiver's app, for what only its state shows (the webhook gate's slots)

    @property
    def database(self) -> Where:
        """What `tests.helpers.database.rows` reads for this stack: its SQLite file or its PostgreSQL URL."""
        return where(self.services.settings)

    async def create(self, provider: str, model: str, input: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/jobs for any provider; asserts the 202."""
        response = await self.client.post("/v1/jobs", json={"provider": provider, "model": model, "input": input})
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job

    async def create_job(self, model: str = STEPX, **input_fields: Any) -> dict[str, Any]:
        body = {"provider": "fal", "model": model, "input": {"prompt": "make it red", "image_url": SMALL_PNG_URI}}
        body["input"].update(input_fields)
        response = await self.client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    async def wait_for(
        self, job_id: str, predicate: Callable[[dict[str, Any]], bool], *, timeout_s: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = await self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job never matched; last state {json.dumps(job)[:800]}")
            await asyncio.sleep(0.02)

    async def wait_final(self, job_id: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
        final = {"succeeded", "failed", "cancelled"}
        return await self.wait_for(job_id, lambda job: job["status"] in final, timeout_s=timeout_s)

    def webhook_path(self, job_id: str) -> str:
        return webhook_path("fal", job_id)


@dataclass
class ClockedStack(Stack):
    """A Stack whose receiver runs on a hand-moved clock."""

    clock: Clock = field(default_factory=Clock)

    @property
    def emulator_calls(self) -> list[tuple[str, str]]:
        assert self.recorder is not None
        return self.recorder.calls

    def submits(self, model: str = STEPX) -> int:
        return self.emulator_calls.count(("POST", f"/fal/{model}"))

    async def task_rows(self, kind: str = "submit") -> list[Any]:
        return await read_rows(self.database, "SELECT * FROM tasks WHERE kind = ? ORDER BY id", kind)


StackFactory = Callable[..., Awaitable[Stack]]
ClockedFactory = Callable[..., Awaitable[ClockedStack]]


async def subscribe(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/subscriptions; asserts the 201 and returns the subscription (with its secret)."""
    response = await stack.client.post("/v1/subscriptions", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def emulators(stack: Stack) -> Emulators:
    assert stack.emulators is not None
    return stack.emulators


@contextlib.asynccontextmanager
async def open_stack(
    data_dir: Path,
    *,
    clock: Clock | None = None,
    workers: bool = True,
    emulator_config: FalEmulatorConfig | None = None,
    wavespeed_config: WaveSpeedEmulatorConfig | None = None,
    stepfun_config: StepFunEmulatorConfig | None = None,
    modelverse_config: ModelverseEmulatorConfig | None = None,
    unchecked: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """A Stack for the block (a ClockedStack on `clock` when given); `workers=False` leaves the task runner and
    reconciler to the test (`run_once`). `overrides` are settings, applied last; `unchecked` sets values below a
    field's validated floor (`model_copy` skips validation)."""
    async with contextlib.AsyncExitStack() as exits:
        signing_key = Ed25519PrivateKey.generate()
        emulators = Emulators(
            fal=FalEmulator(emulator_config or FalEmulatorConfig(**FAST), signing_key=signing_key),
            wavespeed=WaveSpeedEmulator(wavespeed_config or WaveSpeedEmulatorConfig(**FAST)),
            stepfun=StepFunEmulator(stepfun_config or StepFunEmulatorConfig(latency_s=0.01)),
            modelverse=ModelverseEmulator(modelverse_config or ModelverseEmulatorConfig(latency_s=0.01)),
        )
        recorder = RecordingApp(create_emulator_app(emulators=emulators))
        emulator_url = await exits.enter_async_context(running_server(recorder))
        sock = bind_socket("127.0.0.1", 0)
        url = base_url(*sock.getsockname()[:2])
        values: dict[str, Any] = {
            "public_url": url,
            "fal_queue_url": f"{emulator_url}/fal",
            "fal_jwks_url": f"{emulator_url}/fal/.well-known/jwks.json",
            "wavespeed_url": f"{emulator_url}/wavespeed",
            "stepfun_url": f"{emulator_url}/stepfun",
            "modelverse_url": f"{emulator_url}/modelverse",
            "wavespeed_api_key": SecretStr("test-wavespeed-key"),
            "step_api_key": SecretStr("test-step-key"),
            "modelverse_api_key": SecretStr("test-modelverse-key"),
            **overrides,
        }
        settings = make_settings(data_dir, **values)
        if unchecked:
            settings = settings.model_copy(update=unchecked)
        services = await exits.enter_async_context(open_services(settings, clock=clock or time.time))
        if workers:
            await exits.enter_async_context(services.workers())
        app = create_app(services)
        await exits.enter_async_context(running_server(app, sock=sock))
        client = await exits.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        exits.push_async_callback(emulators.aclose)  # no emulator work outlives the stack
        exits.callback(recorder.gate.set)  # first out: no request left held
        parts = (services, url, emulators.fal, emulator_url, client, signing_key, emulators, recorder, app)
        yield Stack(*parts) if clock is None else ClockedStack(*parts, clock=clock)


def open_clocked_stack(
    data_dir: Path, *, clock: Clock | None = None, workers: bool = False, **kwargs: Any
) -> contextlib.AbstractAsyncContextManager[Any]:
    """`open_stack` on a hand-moved `Clock` (a new one unless given), workers off unless asked for: a ClockedStack."""
    return open_stack(data_dir, clock=clock or Clock(), workers=workers, **kwargs)
