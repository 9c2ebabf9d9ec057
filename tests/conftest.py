"""Shared fixtures: settings on a tmp dir, the fal emulator and the receiver on real loopback servers."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

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
from receiver.ingest.signatures import job_token, sign_fal
from receiver.settings import Settings
from receiver.web.asgi_server import base_url, bind_socket, running_server
from receiver.wiring import Services, open_services

FAL_KEY = "test-fal-key"
SMALL_PNG_URI = "data:image/png;base64," + (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8ISfHgA0wYRUdtBIA0MoBFD5jqJkAAAAASUVORK5CYII="
)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'receiver.db'}",
        "data_dir": tmp_path,
        "secret_key": SecretStr("test-secret"),
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


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under this process umask (the old one is restored after)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Clock:
    """A clock the test moves by hand (Unix seconds)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Stack:
    """The receiver (real app on loopback) wired to the fal emulator (also on loopback)."""

    services: Services
    url: str
    emulator: FalEmulator
    emulator_url: str
    client: httpx.AsyncClient
    signing_key: Ed25519PrivateKey  # the key the emulator signs with (until a test rotates it)
    emulators: Emulators | None = None

    async def create(self, provider: str, model: str, input: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/jobs for any provider; asserts the 202."""
        response = await self.client.post("/v1/jobs", json={"provider": provider, "model": model, "input": input})
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job

    async def create_job(self, model: str = "fal-ai/stepx-edit2", **input_fields: Any) -> dict[str, Any]:
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
        return f"/webhooks/fal/{job_id}?token={job_token(b'test-secret', 'fal', job_id)}"


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(tmp_path: Path) -> AsyncIterator[StackFactory]:
    """Builds a Stack; `workers=False` leaves the task runner and reconciler to the test (`run_once`)."""
    opened: list[Any] = []

    async def factory(
        *,
        workers: bool = True,
        emulator_config: FalEmulatorConfig | None = None,
        wavespeed_config: WaveSpeedEmulatorConfig | None = None,
        stepfun_config: StepFunEmulatorConfig | None = None,
        modelverse_config: ModelverseEmulatorConfig | None = None,
        **overrides: Any,
    ) -> Stack:
        signing_key = Ed25519PrivateKey.generate()
        config = emulator_config or FalEmulatorConfig(queue_s=0.01, inference_s=0.02, time_scale=0.001)
        emulators = Emulators(
            fal=FalEmulator(config, signing_key=signing_key),
            wavespeed=WaveSpeedEmulator(
                wavespeed_config or WaveSpeedEmulatorConfig(queue_s=0.01, inference_s=0.02, time_scale=0.001)
            ),
            stepfun=StepFunEmulator(stepfun_config or StepFunEmulatorConfig(latency_s=0.01)),
            modelverse=ModelverseEmulator(modelverse_config or ModelverseEmulatorConfig(latency_s=0.01)),
        )
        emulator = emulators.fal
        emulator_cm = running_server(create_emulator_app(emulators=emulators))
        emulator_url = await emulator_cm.__aenter__()
        opened.append(emulator_cm)
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
        }
        values.update(overrides)
        settings = make_settings(tmp_path, **values)
        services_cm = open_services(settings)
        services = await services_cm.__aenter__()
        opened.append(services_cm)
        if workers:
            workers_cm = services.workers()
            await workers_cm.__aenter__()
            opened.append(workers_cm)
        app_cm = running_server(create_app(services), sock=sock)
        await app_cm.__aenter__()
        opened.append(app_cm)
        client = httpx.AsyncClient(base_url=url, timeout=10)
        opened.append(client)
        opened.append(emulators)
        return Stack(services, url, emulator, emulator_url, client, signing_key, emulators)

    yield factory
    for resource in reversed(opened):
        if isinstance(resource, httpx.AsyncClient):
            await resource.aclose()
        elif isinstance(resource, Emulators):
            await resource.aclose()
        else:
            await resource.__aexit__(None, None, None)


def signed_fal_webhook(
    key: Ed25519PrivateKey,
    request_id: str,
    payload: dict[str, Any] | None,
    *,
    status: str = "OK",
    user_id: str = "emulator-user",
    timestamp: int | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A fal completion body and its signed headers, as fal would send them."""
    data: dict[str, Any] = {"request_id": request_id, "gateway_request_id": request_id, "status": status}
    data["payload"] = payload
    data.update(extra or {})
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = sign_fal(
        key,
        request_id=request_id,
        user_id=user_id,
        timestamp=int(time.time()) if timestamp is None else timestamp,
        body=body,
    )
    headers["Content-Type"] = "application/json"
    return body, headers
