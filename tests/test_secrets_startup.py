"""Start-up hygiene through real `receiver serve` processes: log lines redacted from the first one, the
FAL_KEY-without-user-id warning, and an owner-only generated secret key in an owner-only data dir."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from receiver.cli.serve import startup_warnings
from receiver.emulators import create_emulator_app
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.ingest.signatures import job_token
from receiver.web.asgi_server import running_server
from tests.helpers.files import mode_of
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.processes import ServerProcess, serve_env
from tests.helpers.stack import make_settings

SECRET_KEY = "startup-test-secret-key"
FAL_USER_WARNING = "RECEIVER_FAL_USER_ID is not"


@pytest.fixture
async def fal_url() -> AsyncIterator[str]:
    emulator = FalEmulator(FalEmulatorConfig(queue_s=0.02, inference_s=0.05, time_scale=0.01))
    async with running_server(create_emulator_app(fal=emulator)) as url:
        yield f"{url}/fal"
    await emulator.aclose()


class Serve(ServerProcess):
    """`receiver serve` on `port` logging at INFO (httpx logs every request URL there) into serve.log."""

    def __init__(self, tmp_path: Path, port: int, fal_url: str, **extra: str) -> None:
        env = serve_env(
            tmp_path,
            RECEIVER_DATA_DIR=str(tmp_path / "data"),
            RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
            RECEIVER_SECRET_KEY=SECRET_KEY,
            RECEIVER_FAL_QUEUE_URL=fal_url,
            RECEIVER_FAL_JWKS_URL=f"{fal_url}/.well-known/jwks.json",
            RECEIVER_TASK_POLL_INTERVAL_S="0.05",
            RECEIVER_LOG_LEVEL="info",
            FAL_KEY="startup-test-fal-key",
            **extra,
        )
        super().__init__(env, port, cwd=tmp_path, log_path=tmp_path / "serve.log")

    async def stopped_log(self) -> str:
        """SIGTERM, wait, and the whole log."""
        if self.alive:
            await self.stop(signal.SIGTERM)
        return self.log_path.read_text(errors="replace")


@pytest.fixture
async def serves() -> AsyncIterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        await serve.stopped_log()


async def test_log_lines_never_carry_webhook_tokens_even_before_any_notification(
    tmp_path: Path, port: int, fal_url: str, serves: list[Serve]
) -> None:
    """A fal submit (its URL carries our webhook URL and token) and its webhook log no token, from the start."""
    serve = Serve(tmp_path, port, fal_url)
    serves.append(serve)
    await serve.start()
    async with httpx.AsyncClient(base_url=serve.url, timeout=10) as client:
        body = {"provider": "fal", "model": "fal-ai/stepx-edit2", "input": {"prompt": "x", "image_url": SMALL_PNG_URI}}
        job = (await client.post("/v1/jobs", json=body)).json()
        deadline = time.monotonic() + 20
        while (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "job never succeeded"
            await asyncio.sleep(0.05)
    log = await serve.stopped_log()
    assert "HTTP Request: POST" in log  # the submit was logged, so the check below means something
    assert job_token(SECRET_KEY.encode(), "fal", job["id"]) not in log
    assert SECRET_KEY not in log
    unredacted = re.findall(r"(?i)token(?:=|%3D)(?!\[redacted\])[^&\s]+", log)
    assert unredacted == []


async def test_fal_key_without_user_id_warns_at_start_up(
    tmp_path: Path, port: int, fal_url: str, serves: list[Serve]
) -> None:
    """`receiver serve` with FAL_KEY and no RECEIVER_FAL_USER_ID logs a warning saying to set it."""
    serve = Serve(tmp_path, port, fal_url)
    serves.append(serve)
    await serve.start()
    log = await serve.stopped_log()
    assert FAL_USER_WARNING in log and "WARNING" in log


async def test_fal_key_with_user_id_does_not_warn(tmp_path: Path, port: int, fal_url: str, serves: list[Serve]) -> None:
    """With RECEIVER_FAL_USER_ID set beside FAL_KEY there is no such warning."""
    serve = Serve(tmp_path, port, fal_url, RECEIVER_FAL_USER_ID="user-123")
    serves.append(serve)
    await serve.start()
    assert FAL_USER_WARNING not in await serve.stopped_log()


def test_generated_secret_key_is_owner_only_in_an_owner_only_data_dir(tmp_path: Path, umask: int) -> None:
    """With no RECEIVER_SECRET_KEY, the key file made in a new data dir is 0600 and the dir 0700."""
    settings = make_settings(tmp_path, data_dir=tmp_path / "data", secret_key=None)
    settings.resolve_secret_key()
    assert mode_of(tmp_path / "data") == 0o700
    assert mode_of(tmp_path / "data" / "secret_key") == 0o600


def test_data_dir_open_to_others_is_warned_about(tmp_path: Path) -> None:
    """An existing data dir its group or others can enter gets a start-up warning naming chmod 700."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data").chmod(0o755)
    settings = make_settings(tmp_path, data_dir=tmp_path / "data", fal_user_id="u", secret_key=SecretStr("k"))
    [warning] = startup_warnings(settings)
    assert "RECEIVER_DATA_DIR" in warning and "chmod 700" in warning
    (tmp_path / "data").chmod(0o700)
    assert startup_warnings(settings) == []
