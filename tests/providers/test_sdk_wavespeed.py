"""WaveSpeed's own Python SDK (`wavespeed`) driven against the WaveSpeed emulator on loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
import requests
import wavespeed

from receiver.emulators import Emulators, create_emulator_app
from receiver.emulators.wavespeed import WaveSpeedEmulator, WaveSpeedEmulatorConfig
from receiver.web.asgi_server import running_server
from tests.helpers.images import png_bytes, png_data_uri, served_image_size
from tests.helpers.tls import emulate_tls

MODEL = "wavespeed-ai/step1x-edit"
FAST: dict[str, Any] = {"queue_s": 0.01, "inference_s": 0.01, "time_scale": 0.0001}
POLL_S = 0.01
TIMEOUT_S = 10.0
T = TypeVar("T")


@dataclass
class WaveSpeed:
    emu: WaveSpeedEmulator
    client: wavespeed.Client
    http: httpx.AsyncClient  # plain client on the emulator's root, to fetch output files

    def configure(self, **overrides: Any) -> None:
        self.emu.config = WaveSpeedEmulatorConfig(**{**FAST, **overrides})

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call (it uses `requests`) off the loop that serves the emulator."""
        return await asyncio.to_thread(method, *args, **kwargs)


@pytest_asyncio.fixture
async def ws() -> AsyncIterator[WaveSpeed]:
    emu = WaveSpeedEmulator(WaveSpeedEmulatorConfig(**FAST))
    async with running_server(create_emulator_app(emulators=Emulators(wavespeed=emu))) as root:
        # base_url is the SDK's documented constructor argument (default https://api.wavespeed.ai).
        client = wavespeed.Client(api_key="test-key", base_url=f"{root}/wavespeed", max_connection_retries=0)
        async with httpx.AsyncClient(base_url=root, trust_env=False) as http:
            yield WaveSpeed(emu, client, http)


async def test_run_submits_polls_and_returns_the_outputs(ws: WaveSpeed) -> None:
    """run() posts to /api/v3/{model}, polls the result route and returns the completed outputs."""
    inputs = {"prompt": "make it red", "image": png_data_uri(40, 30), "seed": 7}
    output = await ws.call(ws.client.run, MODEL, inputs, poll_interval=POLL_S, timeout=TIMEOUT_S)
    assert [await served_image_size(ws.http, url) for url in output["outputs"]] == [(40, 30)]
    (prediction,) = ws.emu.predictions.values()
    assert (prediction.version, prediction.input.seed) == ("v3", 7)


async def test_sync_mode_returns_the_outputs_from_the_submit(ws: WaveSpeed) -> None:
    """run(enable_sync_mode=True) gets the finished prediction from the submit answer, without polling."""
    inputs = {"prompt": "make it red", "image": png_data_uri()}
    output = await ws.call(ws.client.run, MODEL, inputs, enable_sync_mode=True, timeout=TIMEOUT_S)
    assert [await served_image_size(ws.http, url) for url in output["outputs"]] == [(32, 24)]


async def test_sync_mode_timeout_is_reported_as_still_running(ws: WaveSpeed) -> None:
    """A sync-mode wait that runs out while the prediction is `created` is a sync timeout (5004), not a failure."""
    ws.configure(queue_s=30, sync_timeout_s=0.01)
    inputs = {"prompt": "make it red", "image": png_data_uri()}
    outcome = await ws.call(ws.client.run_no_throw, MODEL, inputs, enable_sync_mode=True, timeout=TIMEOUT_S)
    (prediction,) = ws.emu.predictions.values()
    assert prediction.status == "created"
    assert (outcome["status"], outcome["task_id"], outcome["outputs"]) == ("processing", prediction.id, None)
    assert "Sync mode timed out" in outcome["error"]
    later = await ws.call(ws.client.get_result, outcome["task_id"])
    assert (later["data"]["id"], later["data"]["status"]) == (prediction.id, "created")
    with pytest.raises(RuntimeError, match="Sync mode timed out"):
        await ws.call(ws.client.run, MODEL, inputs, enable_sync_mode=True, timeout=TIMEOUT_S)


async def test_a_failed_task_raises_with_its_error(ws: WaveSpeed) -> None:
    """A task that fails (data.status failed, HTTP 200) raises RuntimeError carrying WaveSpeed's error text."""
    ws.configure(task_error_code=1402)
    inputs = {"prompt": "make it red", "image": png_data_uri()}
    with pytest.raises(RuntimeError, match=r"Prediction failed \(task_id: \w+\): Failed to download"):
        await ws.call(ws.client.run, MODEL, inputs, poll_interval=POLL_S, timeout=TIMEOUT_S)


async def test_invalid_input_fails_the_submit(ws: WaveSpeed) -> None:
    """A v3 seed above 2147483647 is refused at submit; the SDK's error carries the message naming `seed`."""
    inputs = {"prompt": "make it red", "image": png_data_uri(), "seed": 2_147_483_648}
    with pytest.raises(RuntimeError, match=r"HTTP 400: .*seed must be an integer from -1 to 2147483647"):
        await ws.call(ws.client.run, MODEL, inputs, poll_interval=POLL_S, timeout=TIMEOUT_S)
    assert ws.emu.predictions == {}


async def test_upload_then_edit_the_uploaded_image(ws: WaveSpeed, tmp_path: Path) -> None:
    """upload() gets a ticket, PUTs the file and returns a download URL that a prediction can read."""
    path = tmp_path / "input.png"
    path.write_bytes(png_bytes(48, 20))
    url = await ws.call(ws.client.upload, str(path))
    downloaded = await ws.http.get(url)
    assert (downloaded.content, downloaded.headers["content-type"]) == (path.read_bytes(), "image/png")
    output = await ws.call(
        ws.client.run, MODEL, {"prompt": "flip it", "image": url}, poll_interval=POLL_S, timeout=TIMEOUT_S
    )
    assert [await served_image_size(ws.http, out) for out in output["outputs"]] == [(48, 20)]


async def test_the_sdk_reaches_the_emulator_over_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With REQUESTS_CA_BUNDLE set to the certificate `receiver emulate --tls` printed, run() submits and polls
    over https; without it, requests refuses the emulator's certificate."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    async with emulate_tls(tmp_path) as emulate:
        client = wavespeed.Client(api_key="k", base_url=f"{emulate.root}/wavespeed", max_connection_retries=0)
        inputs = {"prompt": "make it red", "image": png_data_uri(40, 30)}
        with pytest.raises(RuntimeError) as refused:
            await asyncio.to_thread(client.run, MODEL, inputs, poll_interval=POLL_S, timeout=TIMEOUT_S)
        assert isinstance(refused.value.__cause__, requests.exceptions.SSLError)

        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulate.certfile))  # read on every request, as in a shell
        output = await asyncio.to_thread(client.run, MODEL, inputs, poll_interval=POLL_S, timeout=TIMEOUT_S)
        (url,) = output["outputs"]
        assert url.startswith(f"{emulate.root}/wavespeed/")
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=emulate.certfile)) as http:
            assert await served_image_size(http, url) == (40, 30)
