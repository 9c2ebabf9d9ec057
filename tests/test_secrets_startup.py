"""Start-up hygiene through real `receiver serve` processes: log lines redacted from the first one, the
FAL_KEY-without-user-id warning, and an owner-only generated secret key in an owner-only data dir."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from receiver.cli.serve import startup_warnings
from receiver.emulators import create_emulator_app
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.ingest.signatures import job_token
from receiver.web.asgi_server import bind_socket, running_server
from tests.conftest import SMALL_PNG_URI, make_settings, mode_of

SECRET_KEY = "startup-test-secret-key"
FAL_USER_WARNING = "RECEIVER_FAL_USER_ID is not"


@pytest.fixture
async def fal_url() -> AsyncIterator[str]:
    emulator = FalEmulator(FalEmulatorConfig(queue_s=0.02, inference_s=0.05, time_scale=0.01))
    async with running_server(create_emulator_app(fal=emulator)) as url:
        yield f"{url}/fal"
    await emulator.aclose()


class Serve:
    """`receiver serve` in a subprocess on a free port, its stderr kept in a file."""

    def __init__(self, tmp_path: Path, fal_url: str, **extra: str) -> None:
        sock = bind_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_") and k != "FAL_KEY"}
        self.env.update(
            RECEIVER_DATABASE_URL=f"sqlite:///{tmp_path / 'receiver.db'}",
            RECEIVER_DATA_DIR=str(tmp_path / "data"),
            RECEIVER_PUBLIC_URL=self.url,
            RECEIVER_SECRET_KEY=SECRET_KEY,
            RECEIVER_FAL_QUEUE_URL=fal_url,
            RECEIVER_FAL_JWKS_URL=f"{fal_url}/.well-known/jwks.json",
            RECEIVER_TASK_POLL_INTERVAL_S="0.05",
            RECEIVER_LOG_LEVEL="info",  # httpx logs every request URL at INFO
            FAL_KEY="startup-test-fal-key",
            **extra,
        )
        self.stderr_path = tmp_path / "serve.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
                [sys.executable, "-m", "receiver", "serve", "--port", str(self.port)], env=self.env, stderr=stderr
            )
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert self.proc.poll() is None, f"receiver serve exited: {self.stderr()}"
                assert time.monotonic() < deadline, "receiver serve did not start"
                await asyncio.sleep(0.05)

    def stop(self) -> str:
        """SIGTERM, wait, and the whole stderr."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        return self.stderr()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.stop()


async def test_log_lines_never_carry_webhook_tokens_even_before_any_notification(
    tmp_path: Path, fal_url: str, serves: list[Serve]
) -> None:
    """A fal submit (its URL carries our webhook URL and token) and its webhook log no token, from the start."""
    serve = Serve(tmp_path, fal_url)
    serves.append(serve)
    await serve.start()
    async with httpx.AsyncClient(base_url=serve.url, timeout=10) as client:
        body = {"provider": "fal", "model": "fal-ai/stepx-edit2", "input": {"prompt": "x", "image_url": SMALL_PNG_URI}}
        job = (await client.post("/v1/jobs", json=body)).json()
        deadline = time.monotonic() + 20
        while (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "job never succeeded"
            await asyncio.sleep(0.05)
    log = serve.stop()
    assert "HTTP Request: POST" in log  # the submit was logged, so the check below means something
    assert job_token(SECRET_KEY.encode(), "fal", job["id"]) not in log
    assert SECRET_KEY not in log
    unredacted = re.findall(r"(?i)token(?:=|%3D)(?!\[redacted\])[^&\s]+", log)
    assert unredacted == []


async def test_fal_key_without_user_id_warns_at_start_up(tmp_path: Path, fal_url: str, serves: list[Serve]) -> None:
    """`receiver serve` with FAL_KEY and no RECEIVER_FAL_USER_ID logs a warning saying to set it."""
    serve = Serve(tmp_path, fal_url)
    serves.append(serve)
    await serve.start()
    log = serve.stop()
    assert FAL_USER_WARNING in log and "WARNING" in log


async def test_fal_key_with_user_id_does_not_warn(tmp_path: Path, fal_url: str, serves: list[Serve]) -> None:
    """With RECEIVER_FAL_USER_ID set beside FAL_KEY there is no such warning."""
    serve = Serve(tmp_path, fal_url, RECEIVER_FAL_USER_ID="user-123")
    serves.append(serve)
    await serve.start()
    assert FAL_USER_WARNING not in serve.stop()


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
