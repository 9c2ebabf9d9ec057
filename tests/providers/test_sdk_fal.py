"""fal's own Python client (fal-client) driven against the fal emulator on loopback: queue, fal.run, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import fal_client
import fal_client.client
import httpx
import pytest
import pytest_asyncio

from receiver.emulators import Emulators, create_emulator_app
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.web.asgi_server import running_server
from tests.helpers.images import png_data_uri, served_image_size
from tests.helpers.waiting import until

STEPX = "fal-ai/stepx-edit2"
SDXL = "fal-ai/fast-sdxl/image-to-image"
FAST: dict[str, Any] = {"queue_s": 0.01, "inference_s": 0.01, "time_scale": 0.0001}
POLL_S = 0.01


@dataclass
class Fal:
    emu: FalEmulator
    client: fal_client.AsyncClient
    http: httpx.AsyncClient  # plain client on the emulator's root, to fetch output files

    def configure(self, **overrides: Any) -> None:
        self.emu.config = FalEmulatorConfig(**{**FAST, **overrides})


@pytest_asyncio.fixture
async def fal(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fal]:
    emu = FalEmulator(FalEmulatorConfig(**FAST))
    async with running_server(create_emulator_app(emulators=Emulators(fal=emu))) as root:
        # fal-client builds https://queue.fal.run/ and https://fal.run/ at import time from FAL_RUN_HOST /
        # FAL_QUEUE_RUN_HOST, always with https, so no setting reaches a plain-HTTP loopback emulator:
        # the test patches the two URL prefixes the client reads on every call (test-only monkeypatch).
        monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{root}/fal/")
        monkeypatch.setattr(fal_client.client, "RUN_URL_FORMAT", f"{root}/fal-run/")
        client = fal_client.AsyncClient(key="test-key")
        async with httpx.AsyncClient(base_url=root, trust_env=False) as http:
            yield Fal(emu, client, http)
            if "_client" in client.__dict__:  # the SDK has no close(); close the httpx client it made
                await (await client._client).aclose()


async def test_submit_status_and_result_through_the_sdk(fal: Fal) -> None:
    """submit() returns a handle whose status() parses every state and whose get() returns the edited images."""
    handle = await fal.client.submit(STEPX, {"prompt": "make it red", "image_url": png_data_uri(), "seed": 7})
    assert handle.status_url.endswith(f"/fal/fal-ai/stepx-edit2/requests/{handle.request_id}/status")
    first = await handle.status(with_logs=True)
    assert isinstance(first, fal_client.Queued | fal_client.InProgress | fal_client.Completed)
    result = await handle.get(interval=POLL_S)
    assert result["seed"] == 7
    assert [await served_image_size(fal.http, image["url"]) for image in result["images"]] == [(32, 24)]
    status = await fal.client.status(STEPX, handle.request_id, with_logs=True)
    assert isinstance(status, fal_client.Completed)
    assert status.error is None
    assert status.metrics["inference_time"] > 0
    assert status.logs and status.logs[0]["message"].startswith("Running")
    assert await fal.client.result(STEPX, handle.request_id) == result


async def test_subscribe_to_a_sub_path_model(fal: Fal) -> None:
    """subscribe() on `owner/app/path` polls the `owner/app` status URLs and returns num_images outputs."""
    updates: list[fal_client.Status] = []
    arguments = {"prompt": "flip it", "image_url": png_data_uri(), "num_images": 2, "image_size": "square"}
    result = await fal.client.subscribe(SDXL, arguments, interval=POLL_S, on_queue_update=updates.append)
    assert isinstance(updates[-1], fal_client.Completed)
    assert [await served_image_size(fal.http, image["url"]) for image in result["images"]] == [(512, 512), (512, 512)]


async def test_run_calls_the_synchronous_endpoint(fal: Fal) -> None:
    """run() posts to fal.run and gets the model's output itself, not a queue ticket."""
    result = await fal.client.run(STEPX, {"prompt": "make it blue", "image_url": png_data_uri(40, 30)})
    assert "request_id" not in result
    assert [await served_image_size(fal.http, image["url"]) for image in result["images"]] == [(40, 30)]
    assert result["prompt"] == "make it blue"


@pytest.mark.parametrize("call", ["run", "get"])
async def test_model_errors_raise_the_sdk_http_error(fal: Fal, call: str) -> None:
    """A failing model surfaces as FalClientHTTPError 422 with fal's `detail` list, from run() and get()."""
    fal.configure(model_error=True)
    arguments = {"prompt": "make it red", "image_url": png_data_uri()}
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        if call == "run":
            await fal.client.run(STEPX, arguments)
        else:
            await (await fal.client.submit(STEPX, arguments)).get(interval=POLL_S)
    assert caught.value.status_code == 422
    assert isinstance(caught.value.message, list)
    assert caught.value.message[0]["loc"] == ["body", "prompt"]


async def test_input_errors_raise_before_anything_runs(fal: Fal) -> None:
    """A missing field is a 422 from submit() itself, naming the field."""
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await fal.client.submit(STEPX, {"prompt": "make it red"})
    assert caught.value.status_code == 422
    assert caught.value.message[0]["loc"] == ["body", "image_url"]


async def test_cancel_a_queued_request(fal: Fal) -> None:
    """cancel() on a queued request succeeds; its status is then Completed with the cancellation error."""
    fal.configure(queue_s=30)
    handle = await fal.client.submit(STEPX, {"prompt": "make it red", "image_url": png_data_uri()})
    await handle.cancel()
    status = await handle.status()
    assert isinstance(status, fal_client.Completed)
    assert status.error_type == "client_cancelled"


async def test_fal_run_answers_other_methods_with_a_clear_error(fal: Fal) -> None:
    """The fal.run stand-in takes only POST /{owner}/{app}; anything else says so."""
    response = await fal.http.get(f"/fal-run/{STEPX}")
    assert response.status_code == 405
    assert "fal.run takes POST" in response.json()["detail"]


async def test_run_cut_short_by_shutdown_answers_503(fal: Fal) -> None:
    """A run still queued when the emulator shuts down answers fal's 503 runner_disconnected, never hangs."""
    fal.configure(queue_s=30)
    running = asyncio.create_task(fal.client.run(STEPX, {"prompt": "make it red", "image_url": png_data_uri()}))
    await until(lambda: bool(fal.emu.requests), what="the run reaching the emulator")
    await fal.emu.aclose()
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await running
    assert (caught.value.status_code, caught.value.error_type) == (503, "runner_disconnected")


async def test_stream_is_refused_with_a_clear_error(fal: Fal) -> None:
    """stream() posts to fal.run `{model}/stream`; the edit models do not stream, and the 404 says so."""
    body = {"prompt": "make it red", "image_url": png_data_uri()}
    response = await fal.http.post(f"/fal-run/{STEPX}/stream", json=body, headers={"Authorization": "Key k"})
    assert response.status_code == 404
    assert "has no streaming endpoint" in response.json()["detail"]
    assert fal.emu.requests == {}
