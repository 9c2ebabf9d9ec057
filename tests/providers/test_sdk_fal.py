"""fal's own Python client (fal-client) against the fal emulator over real TLS, configured only the way the README
tells a developer to: FAL_QUEUE_RUN_HOST, FAL_RUN_HOST, SSL_CERT_FILE and FAL_KEY in its environment (it reads the
hosts at import, so it runs in a process of its own: tests/helpers/fal_sdk.py). Queue, fal.run, errors, cancel."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from receiver.emulators import Emulators, create_emulator_app
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.emulators.tls import TlsFiles, write_self_signed
from tests.helpers.images import png_data_uri, served_image_size
from tests.helpers.tls import running_tls_server, trusting
from tests.helpers.waiting import until

STEPX = "fal-ai/stepx-edit2"
FAST: dict[str, Any] = {"queue_s": 0.01, "inference_s": 0.01, "time_scale": 0.0001}
REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFiles]:
    yield write_self_signed(tmp_path_factory.mktemp("tls"))


@dataclass
class Fal:
    emu: FalEmulator
    root: str  # https://127.0.0.1:PORT
    env: dict[str, str]  # what the SDK's process gets
    http: httpx.AsyncClient  # a plain client on the emulator (trusting its certificate), to fetch output files

    def configure(self, **overrides: Any) -> None:
        self.emu.config = FalEmulatorConfig(**{**FAST, **overrides})

    def start(self, scenario: str, arguments: dict[str, Any]) -> asyncio.Task[dict[str, Any]]:
        """Run a scenario of tests/helpers/fal_sdk.py in its own process; the task gives its JSON answer."""
        return asyncio.create_task(self._run(scenario, arguments))

    async def call(self, scenario: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return await self.start(scenario, arguments)

    async def _run(self, scenario: str, arguments: dict[str, Any]) -> dict[str, Any]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.helpers.fal_sdk", scenario, json.dumps({"arguments": arguments}),
            env=self.env, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 120)  # a hang guard only
        assert process.returncode == 0, err.decode()
        answer: dict[str, Any] = json.loads(out)
        return answer


def sdk_env(root: str, files: TlsFiles) -> dict[str, str]:
    """The caller's environment without fal's or TLS variables, then the README's: the hosts (host:port/prefix),
    the certificate to trust, a key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "SSL_CERT", "REQUESTS_CA"))}
    netloc = root.removeprefix("https://")
    env.update(
        FAL_QUEUE_RUN_HOST=f"{netloc}/fal",
        FAL_RUN_HOST=f"{netloc}/fal-run",
        SSL_CERT_FILE=str(files.certfile),
        FAL_KEY="test-key",
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


@pytest_asyncio.fixture
async def fal(tls_files: TlsFiles) -> AsyncIterator[Fal]:
    emu = FalEmulator(FalEmulatorConfig(**FAST))
    async with (
        running_tls_server(create_emulator_app(emulators=Emulators(fal=emu)), tls_files) as root,
        httpx.AsyncClient(base_url=root, verify=trusting(tls_files), trust_env=False) as http,
    ):
        yield Fal(emu, root, sdk_env(root, tls_files), http)


async def test_submit_status_and_result_through_the_sdk(fal: Fal) -> None:
    """submit() returns a handle whose status() parses every state and whose get() returns the edited images,
    all on the https URLs the SDK built from FAL_QUEUE_RUN_HOST."""
    seen = await fal.call("submit_status_result", {"prompt": "make it red", "image_url": png_data_uri(), "seed": 7})
    assert seen["status_url"] == f"{fal.root}/fal/fal-ai/stepx-edit2/requests/{seen['request_id']}/status"
    assert seen["first"]["type"] in ("Queued", "InProgress", "Completed")
    result = seen["result"]
    assert result["seed"] == 7
    assert [await served_image_size(fal.http, image["url"]) for image in result["images"]] == [(32, 24)]
    status = seen["status"]
    assert status["type"] == "Completed"
    assert status["error"] is None
    assert status["metrics"]["inference_time"] > 0
    assert status["logs"] and status["logs"][0]["message"].startswith("Running")
    assert seen["result_again"] == result
    assert seen["request_id"] in fal.emu.requests  # it was this emulator that answered


async def test_subscribe_to_a_sub_path_model(fal: Fal) -> None:
    """subscribe() on `owner/app/path` polls the `owner/app` status URLs and returns num_images outputs."""
    arguments = {"prompt": "flip it", "image_url": png_data_uri(), "num_images": 2, "image_size": "square"}
    seen = await fal.call("subscribe", arguments)
    assert seen["updates"][-1]["type"] == "Completed"
    sizes = [await served_image_size(fal.http, image["url"]) for image in seen["result"]["images"]]
    assert sizes == [(512, 512), (512, 512)]


async def test_run_calls_the_synchronous_endpoint(fal: Fal) -> None:
    """run() posts to the FAL_RUN_HOST and gets the model's output itself, not a queue ticket."""
    result = (await fal.call("run", {"prompt": "make it blue", "image_url": png_data_uri(40, 30)}))["result"]
    assert "request_id" not in result
    assert [await served_image_size(fal.http, image["url"]) for image in result["images"]] == [(40, 30)]
    assert result["images"][0]["url"].startswith(f"{fal.root}/fal-run/")
    assert result["prompt"] == "make it blue"


@pytest.mark.parametrize("call", ["run", "get"])
async def test_model_errors_raise_the_sdk_http_error(fal: Fal, call: str) -> None:
    """A failing model surfaces as FalClientHTTPError 422 with fal's `detail` list, from run() and get()."""
    fal.configure(model_error=True)
    error = (await fal.call(call, {"prompt": "make it red", "image_url": png_data_uri()}))["error"]
    assert error["status_code"] == 422
    assert isinstance(error["message"], list)
    assert error["message"][0]["loc"] == ["body", "prompt"]


async def test_input_errors_raise_before_anything_runs(fal: Fal) -> None:
    """A missing field is a 422 from submit() itself, naming the field."""
    error = (await fal.call("submit", {"prompt": "make it red"}))["error"]
    assert error["status_code"] == 422
    assert error["message"][0]["loc"] == ["body", "image_url"]
    assert fal.emu.requests == {}


async def test_cancel_a_queued_request(fal: Fal) -> None:
    """cancel() on a queued request succeeds; its status is then Completed with the cancellation error."""
    fal.configure(queue_s=30)
    status = (await fal.call("cancel", {"prompt": "make it red", "image_url": png_data_uri()}))["status"]
    assert status["type"] == "Completed"
    assert status["error_type"] == "client_cancelled"


async def test_fal_run_answers_other_methods_with_a_clear_error(fal: Fal) -> None:
    """The fal.run stand-in takes only POST /{owner}/{app}; anything else says so."""
    response = await fal.http.get(f"/fal-run/{STEPX}")
    assert response.status_code == 405
    assert "fal.run takes POST" in response.json()["detail"]


async def test_run_cut_short_by_shutdown_answers_503(fal: Fal) -> None:
    """A run still queued when the emulator shuts down answers fal's 503 runner_disconnected, never hangs."""
    fal.configure(queue_s=30)
    running = fal.start("run", {"prompt": "make it red", "image_url": png_data_uri()})
    await until(lambda: bool(fal.emu.requests) or running.done(), what="the run reaching the emulator")
    await fal.emu.aclose()
    error = (await running)["error"]
    assert (error["status_code"], error["error_type"]) == (503, "runner_disconnected")


async def test_stream_is_refused_with_a_clear_error(fal: Fal) -> None:
    """stream() posts to fal.run `{model}/stream`; the edit models do not stream, and the 404 says so."""
    body = {"prompt": "make it red", "image_url": png_data_uri()}
    response = await fal.http.post(f"/fal-run/{STEPX}/stream", json=body, headers={"Authorization": "Key k"})
    assert response.status_code == 404
    assert "has no streaming endpoint" in response.json()["detail"]
    assert fal.emu.requests == {}


async def test_the_sdk_refuses_the_emulator_without_its_certificate(fal: Fal) -> None:
    """Without SSL_CERT_FILE the SDK does not trust the emulator: the TLS the other tests use is real."""
    env = {k: v for k, v in fal.env.items() if k != "SSL_CERT_FILE"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.helpers.fal_sdk", "run", json.dumps({"arguments": {"prompt": "x"}}),
        env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in err.decode()
    assert fal.emu.requests == {}
