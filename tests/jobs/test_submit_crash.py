"""A `receiver serve` killed with SIGKILL in the middle of a paid synchronous call, then restarted."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.emulators import Emulators, StepFunEmulator, StepFunEmulatorConfig, create_emulator_app
from receiver.web.asgi_server import running_server
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.processes import ServerProcess, cli_env, held_port, wait_status

LEASE_S = 3
STEPFUN_BODY = {"provider": "stepfun", "model": "step-image-edit-2", "input": {"prompt": "red", "image": SMALL_PNG_URI}}


@pytest.fixture
async def stepfun() -> AsyncIterator[tuple[StepFunEmulator, str]]:
    emulator = StepFunEmulator(StepFunEmulatorConfig(latency_s=6.0))
    async with running_server(create_emulator_app(emulators=Emulators(stepfun=emulator))) as url:
        yield emulator, url


@pytest.fixture
async def stepfun_server(tmp_path: Path, stepfun: tuple[StepFunEmulator, str]) -> AsyncIterator[ServerProcess]:
    with held_port() as port:  # held across the kill and restart: no other process can take it meanwhile
        async for process in _stepfun_server(tmp_path, stepfun, port):
            yield process


async def _stepfun_server(
    tmp_path: Path, stepfun: tuple[StepFunEmulator, str], port: int
) -> AsyncIterator[ServerProcess]:
    env = cli_env(
        tmp_path,
        RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        RECEIVER_STEPFUN_URL=f"{stepfun[1]}/stepfun",
        RECEIVER_TASK_LEASE_S=str(LEASE_S),
        RECEIVER_STEPFUN_CONCURRENCY="1",
        RECEIVER_FETCH_ALLOW_PRIVATE="true",
        STEP_API_KEY="test-step-key",
    )
    process = ServerProcess(env, port, cwd=tmp_path, log_path=tmp_path / "serve.log")
    yield process
    if process.alive:
        await process.stop(signal.SIGTERM)


async def until_calls(emulator: StepFunEmulator, calls: int) -> None:
    deadline = time.monotonic() + 20
    while emulator.calls < calls:
        assert time.monotonic() < deadline, f"StepFun got {emulator.calls} calls, expected {calls}"
        await asyncio.sleep(0.02)


async def test_kill_9_during_a_stepfun_call_fails_the_job_and_frees_its_slot(
    stepfun_server: ServerProcess, stepfun: tuple[StepFunEmulator, str]
) -> None:
    """SIGKILL while StepFun is editing: after the restart the job fails with provider_outcome_unknown (the
    edit may have run and been paid for; its answer is lost), StepFun is never called again for it, and its
    concurrency slot (of 1) is free for the next job."""
    emulator, _ = stepfun
    await stepfun_server.start()
    async with httpx.AsyncClient(base_url=stepfun_server.url, timeout=10) as client:
        created = await client.post("/v1/jobs", json=STEPFUN_BODY)
        assert created.status_code == 202, created.text
        job: dict[str, Any] = created.json()
        await until_calls(emulator, 1)
    await stepfun_server.stop()
    emulator.config.latency_s = 0.01
    await stepfun_server.start()
    async with httpx.AsyncClient(base_url=stepfun_server.url, timeout=10) as client:
        final = await wait_status(client, job["id"], {"succeeded", "failed", "cancelled"})
        assert final["status"] == "failed", final
        assert final["error"]["code"] == "provider_outcome_unknown"
        assert "not resent" in final["error"]["message"]
        assert emulator.calls == 1
        created = await client.post("/v1/jobs", json=STEPFUN_BODY)
        assert created.status_code == 202, created.text
        after = await wait_status(client, created.json()["id"], {"succeeded", "failed", "cancelled"})
    assert after["status"] == "succeeded", after
    assert emulator.calls == 2
