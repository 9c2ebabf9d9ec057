"""Fixtures of the CLI tests: a fal emulator in the test's loop and `receiver serve` processes that use it."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from receiver.emulators import create_emulator_app
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.web.asgi_server import running_server
from tests.helpers.processes import ServerProcess, cli_env

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
async def emulator() -> AsyncIterator[tuple[FalEmulator, str]]:
    emu = FalEmulator(FalEmulatorConfig(queue_s=0.05, inference_s=0.1, time_scale=0.01))
    async with running_server(create_emulator_app(fal=emu)) as url:
        yield emu, url
    await emu.aclose()


@pytest.fixture
async def make_server(tmp_path: Path, emulator: tuple[FalEmulator, str], port: int) -> AsyncIterator[ServerFactory]:
    """Builds the test's `receiver serve` process (not started) on `port`, with the fal emulator and any extra
    settings given; stopped after the test."""
    _, emulator_url = emulator
    made: list[ServerProcess] = []

    def build(**extra: str) -> ServerProcess:
        env = cli_env(
            tmp_path,
            RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
            RECEIVER_FAL_QUEUE_URL=f"{emulator_url}/fal",
            RECEIVER_FAL_JWKS_URL=f"{emulator_url}/fal/.well-known/jwks.json",
            RECEIVER_RECONCILE_AFTER_S="30",
            **extra,
        )
        made.append(ServerProcess(env, port, cwd=tmp_path, log_path=tmp_path / "serve.log"))
        return made[-1]

    yield build
    for process in made:
        if process.alive:
            await process.stop(signal.SIGTERM)


@pytest.fixture
def server(make_server: ServerFactory) -> ServerProcess:
    return make_server()
