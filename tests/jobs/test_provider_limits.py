"""Provider limits set through their RECEIVER_* variables: submits per minute, jobs at once, poll gaps,
WaveSpeed resubmits and the synchronous call timeout, observed at the emulators on a hand-moved clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr
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
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig, RequestStatus
from receiver.jobs.service import DEFER_S, RESUBMIT_DELAY_S
from receiver.web.asgi_server import base_url, bind_socket, running_server
from receiver.wiring import Services, open_services
from tests.helpers.clock import Clock
from tests.helpers.database import rows
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.provider_webhooks import signed_fal_webhook
from tests.helpers.stack import make_settings

FAST = {"queue_s": 0.01, "inference_s": 0.02, "time_scale": 0.001}
MODELS = {
    "fal": ("fal-ai/stepx-edit2", {"prompt": "red", "image_url": SMALL_PNG_URI}),
    "wavespeed": ("wavespeed-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI}),
    "stepfun": ("step-image-edit-2", {"prompt": "red", "image": SMALL_PNG_URI}),
    "modelverse": ("stepfun-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI}),
}
EDIT_PATHS = {"stepfun": "/stepfun/v1/images/edits", "modelverse": "/modelverse/v1/images/generations"}


class Gate:
    """Wraps the emulators' app: records every request (method, path) and holds the POSTs to `held` paths
    until `release()`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.calls: list[tuple[str, str]] = []
        self.held: set[str] = set()
        self._open = asyncio.Event()
        self._open.set()

    def hold(self, *paths: str) -> None:
        self.held = set(paths)
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def posts(self, path: str) -> int:
        return self.calls.count(("POST", path))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.calls.append((scope["method"], scope["path"]))
            if scope["method"] == "POST" and scope["path"] in self.held:
                await self._open.wait()
        await self.app(scope, receive, send)


@dataclass
class Rig:
    """The receiver (no workers: the test runs the task runner and reconciler) on a hand-moved clock, and
    all four emulators behind a Gate."""

    services: Services
    client: httpx.AsyncClient
    emulators: Emulators
    gate: Gate
    signing_key: Ed25519PrivateKey
    clock: Clock = field(default_factory=Clock)

    async def create(self, provider: str) -> str:
        model, input = MODELS[provider]
        response = await self.client.post("/v1/jobs", json={"provider": provider, "model": model, "input": input})
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    def submit_tasks(self, job_id: str) -> list[dict[str, Any]]:
        """The job's submit tasks, read from the database file."""
        path = self.services.db.path
        return [
            dict(row)
            for row in rows(path, "SELECT * FROM tasks WHERE kind = 'submit' AND job_id = ? ORDER BY id", job_id)
        ]

    def submits(self, provider: str) -> int:
        """Submits the provider's emulator has taken."""
        emulators = self.emulators
        counts = {
            "fal": len(emulators.fal.requests),
            "wavespeed": len(emulators.wavespeed.predictions),
            "stepfun": emulators.stepfun.calls,
            "modelverse": emulators.modelverse.calls,
        }
        return counts[provider]

    def waits(self, job_id: str) -> bool:
        """The job's submit was put back for later: pending, due after now."""
        live = [task for task in self.submit_tasks(job_id) if task["status"] in ("pending", "leased")]
        return any(task["status"] == "pending" and task["run_at"] > self.clock() for task in live)


@contextlib.asynccontextmanager
async def open_rig(
    tmp_path: Path,
    *,
    fal: FalEmulatorConfig | None = None,
    wavespeed: WaveSpeedEmulatorConfig | None = None,
    unchecked: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Rig]:
    """A Rig; settings not in `overrides` come from the environment (the variable under test). `unchecked`
    sets values below a field's validated floor (`model_copy` skips validation)."""
    clock = Clock()
    signing_key = Ed25519PrivateKey.generate()
    emulators = Emulators(
        fal=FalEmulator(fal or FalEmulatorConfig(**FAST), signing_key=signing_key),
        wavespeed=WaveSpeedEmulator(wavespeed or WaveSpeedEmulatorConfig(**FAST)),
        stepfun=StepFunEmulator(StepFunEmulatorConfig(latency_s=0.01)),
        modelverse=ModelverseEmulator(ModelverseEmulatorConfig(latency_s=0.01)),
    )
    gate = Gate(create_emulator_app(emulators=emulators))
    async with contextlib.AsyncExitStack() as exits:
        exits.push_async_callback(emulators.aclose)
        emulator_url = await exits.enter_async_context(running_server(gate))
        exits.callback(gate.release)  # before the server stops: no request left hanging
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
        settings = make_settings(tmp_path, **values)
        if unchecked:
            settings = settings.model_copy(update=unchecked)
        services = await exits.enter_async_context(open_services(settings, clock=clock))
        await exits.enter_async_context(running_server(create_app(services), sock=sock))
        client = await exits.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        yield Rig(services, client, emulators, gate, signing_key, clock)


async def until(predicate: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("provider", list(MODELS))
async def test_rate_per_min_holds_the_next_submit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    """RECEIVER_<PROVIDER>_RATE_PER_MIN=2: a third submit in the same minute waits, its job pending; it goes out
    once the minute since the first two has passed."""
    monkeypatch.setenv(f"RECEIVER_{provider.upper()}_RATE_PER_MIN", "2")
    async with open_rig(tmp_path, wavespeed_concurrency=0) as rig:
        job_ids = [await rig.create(provider) for _ in range(3)]
        assert await rig.services.runner.run_once() == 3
        assert rig.submits(provider) == 2
        [waiting] = [job_id for job_id in job_ids if rig.waits(job_id)]
        assert (await rig.job(waiting))["status"] == "pending"
        rig.clock.advance(59)  # the deferral is over, the minute is not
        await rig.services.runner.run_once()
        assert rig.submits(provider) == 2 and rig.waits(waiting)
        rig.clock.advance(2)
        await rig.services.runner.run_once()
        assert rig.submits(provider) == 3
        assert (await rig.job(waiting))["status"] != "pending"


async def test_fal_concurrency_holds_the_next_job_until_one_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECEIVER_FAL_CONCURRENCY=1: a second job waits in pending while the first is at fal; once the first
    finishes (its webhook), the second is submitted."""
    monkeypatch.setenv("RECEIVER_FAL_CONCURRENCY", "1")
    async with open_rig(tmp_path, fal=FalEmulatorConfig(**FAST, no_delivery=True)) as rig:
        job_ids = [await rig.create("fal") for _ in range(2)]
        assert await rig.services.runner.run_once() == 2
        assert rig.submits("fal") == 1
        [waiting] = [job_id for job_id in job_ids if rig.waits(job_id)]
        [first] = [job_id for job_id in job_ids if job_id != waiting]
        rig.clock.advance(DEFER_S)
        await rig.services.runner.run_once()
        assert rig.submits("fal") == 1 and rig.waits(waiting)  # the first is still at fal
        [request] = rig.emulators.fal.requests.values()
        await until(lambda: request.status is RequestStatus.COMPLETED)
        body, headers = signed_fal_webhook(rig.signing_key, request.request_id, request.output)
        token_path = (request.webhook_url or "").split("/webhooks/", 1)[1]
        response = await rig.client.post(f"/webhooks/{token_path}", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert (await rig.job(first))["status"] == "succeeded"
        rig.clock.advance(DEFER_S)
        await rig.services.runner.run_once()
        assert rig.submits("fal") == 2
        assert (await rig.job(waiting))["status"] != "pending"


@pytest.mark.parametrize("provider", ["stepfun", "modelverse"])
async def test_sync_concurrency_holds_the_next_call_until_one_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    """RECEIVER_STEPFUN_CONCURRENCY=1 (Modelverse alike): while one synchronous call is in flight the next job
    waits in pending, and never reaches the provider; it is called once the first call has answered."""
    monkeypatch.setenv(f"RECEIVER_{provider.upper()}_CONCURRENCY", "1")
    async with open_rig(tmp_path) as rig:
        path = EDIT_PATHS[provider]
        rig.gate.hold(path)
        job_ids = [await rig.create(provider) for _ in range(2)]
        running = asyncio.create_task(rig.services.runner.run_once())
        await until(lambda: rig.gate.posts(path) == 1 and any(rig.waits(job_id) for job_id in job_ids))
        [waiting] = [job_id for job_id in job_ids if rig.waits(job_id)]
        [first] = [job_id for job_id in job_ids if job_id != waiting]
        assert (await rig.job(first))["status"] == "running" and (await rig.job(waiting))["status"] == "pending"
        assert rig.gate.posts(path) == 1
        rig.gate.release()
        assert await running == 2
        assert (await rig.job(first))["status"] == "succeeded"
        rig.clock.advance(DEFER_S)
        await rig.services.runner.run_once()
        assert rig.gate.posts(path) == 2
        assert (await rig.job(waiting))["status"] == "succeeded"


async def test_poll_gaps_stop_growing_at_poll_max_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RECEIVER_POLL_MAX_INTERVAL_S=15: poll gaps of an unfinished job double from RECEIVER_POLL_INTERVAL_S=10
    and then stay at 15 s."""
    monkeypatch.setenv("RECEIVER_POLL_MAX_INTERVAL_S", "15")
    fal = FalEmulatorConfig(queue_s=30, no_delivery=True)
    async with open_rig(tmp_path, fal=fal, reconcile_after_s=5, poll_interval_s=10) as rig:
        job_id = await rig.create("fal")
        assert await rig.services.runner.run_once() == 1
        reconciler, runner = rig.services.reconciler, rig.services.runner
        for gap in [5, 10, 15, 15]:
            rig.clock.advance(gap - 1)
            assert await reconciler.run_once() == ([], [])
            rig.clock.advance(1)
            assert await reconciler.run_once() == ([job_id], [])
            assert await runner.run_once() == 1
        assert (await rig.job(job_id))["status"] == "submitted"


async def test_wavespeed_max_attempts_exhausted_fails_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RECEIVER_WAVESPEED_MAX_ATTEMPTS=2: a job whose predictions keep failing with a retryable 5xxx code is
    submitted twice, then failed with WaveSpeed's code; no third prediction."""
    monkeypatch.setenv("RECEIVER_WAVESPEED_MAX_ATTEMPTS", "2")
    wavespeed = WaveSpeedEmulatorConfig(**FAST, task_error_code=5003, task_error_count=100)
    async with open_rig(tmp_path, wavespeed=wavespeed) as rig:
        job_id = await rig.create("wavespeed")
        runner, predictions = rig.services.runner, rig.emulators.wavespeed.predictions
        for attempt in (1, 2):
            assert await runner.run_once() == 1  # the submit
            assert rig.submits("wavespeed") == attempt
            [prediction] = [p for p in predictions.values() if p.id == (await rig.job(job_id))["provider_request_id"]]
            await until(lambda p=prediction: p.delivery_state == "delivered")  # its failure webhook is recorded
            assert await runner.run_once() == 1  # the poll the webhook asked for reads the 5003
            if attempt == 1:
                assert rig.waits(job_id)  # a fresh submit, after the resubmit delay
                rig.clock.advance(RESUBMIT_DELAY_S)
        job = await rig.job(job_id)
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "wavespeed_5003" and "after 2 attempts" in job["error"]["message"]
        assert [task["status"] for task in rig.submit_tasks(job_id)] == ["done", "done"]
        rig.clock.advance(3600)
        await runner.run_once()
        assert rig.submits("wavespeed") == 2


@pytest.mark.parametrize("provider", ["stepfun", "modelverse"])
async def test_sync_timeout_fails_the_job_without_a_second_call(tmp_path: Path, provider: str) -> None:
    """RECEIVER_SYNC_TIMEOUT_S bounds a synchronous call: a provider that never answers fails the job as
    outcome-unknown after that long, and it is never called twice. (The field's floor is 120 s; the test sets
    0.5 s on the Settings object it hands to the wiring.)"""
    async with open_rig(tmp_path, unchecked={"sync_timeout_s": 0.5}) as rig:
        path = EDIT_PATHS[provider]
        rig.gate.hold(path)  # never released: only the timeout can end the call
        job_id = await rig.create(provider)
        assert await asyncio.wait_for(rig.services.runner.run_once(), timeout=10) == 1
        job = await rig.job(job_id)
        assert (job["status"], job["error"]["code"]) == ("failed", "provider_outcome_unknown")
        rig.clock.advance(3600)
        await rig.services.runner.run_once()
        assert rig.gate.posts(path) == 1
