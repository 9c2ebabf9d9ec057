"""The queue emulators (fal, WaveSpeed) behind a module's Switch: a client on the emulator's routes and the
receiver its signed webhooks go to, with the steps their tests share (submit, wait, read the deliveries)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from starlette.types import ASGIApp

from receiver.emulators import create_emulator_app
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig, FalRequest
from receiver.emulators.wavespeed import Prediction, WaveSpeedEmulator, WaveSpeedEmulatorConfig
from tests.helpers.images import data_uri, png_bytes
from tests.helpers.receivers import Hook, HookReceiver
from tests.helpers.servers import SwitchedServers, mounted
from tests.helpers.waiting import until

FAST: dict[str, Any] = {"queue_s": 0.01, "inference_s": 0.01, "time_scale": 0.0001}
FAL_AUTH = {"Authorization": "Key test-key"}
WAVESPEED_AUTH = {"Authorization": "Bearer test-key"}
STEPX = "fal-ai/stepx-edit2"
STEP1X = "wavespeed-ai/step1x-edit"
DEADLINE_S = 5.0


@dataclass
class QueueHarness:
    """A client on a queue emulator's mount (with a key), the receiver its webhooks go to, and the root URL."""

    emu: Any
    client: httpx.AsyncClient
    receiver: HookReceiver
    root: str

    async def hooks(self, count: int) -> list[Hook]:
        """The webhooks received, once there are at least `count`."""
        await until(lambda: len(self.receiver.hooks) >= count)
        return self.receiver.hooks

    async def settled(self, submitted: dict[str, Any]) -> Any:
        """The emulator's record of the submitted job once its webhook delivery is no longer pending."""
        state = self.state(submitted)
        await until(lambda: state.delivery_state != "pending")
        return state

    def configure(self, **overrides: Any) -> None:
        """A fresh emulator config: quick timings, then `overrides`."""
        raise NotImplementedError

    def state(self, submitted: dict[str, Any]) -> Any:
        """The emulator's record of the submitted job."""
        raise NotImplementedError

    async def submit(self, *, webhook: bool = True, webhook_url: str | None = None, **fields: Any) -> dict[str, Any]:
        """Submit an edit whose webhook goes to the receiver (or `webhook_url`; none when not `webhook`)."""
        raise NotImplementedError

    async def completes(self, submitted: dict[str, Any]) -> None:
        """Wait until the submitted job has completed with its output."""
        raise NotImplementedError


@dataclass
class FalHarness(QueueHarness):
    emu: FalEmulator

    def configure(self, **overrides: Any) -> None:
        self.emu.config = FalEmulatorConfig(**{**FAST, **overrides})

    async def submit(
        self, model: str = STEPX, *, webhook: bool = True, webhook_url: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Submit an edit to the queue (webhooks to the receiver, or `webhook_url`); asserts the 200."""
        body = {"prompt": "make it red", "image_url": data_uri(png_bytes()), **fields}
        params = {"fal_webhook": webhook_url or self.receiver.url} if webhook else {}
        response = await self.client.post(f"/{model}", json=body, params=params)
        assert response.status_code == 200, response.text
        submitted: dict[str, Any] = response.json()
        return submitted

    async def completed(self, submitted: dict[str, Any]) -> dict[str, Any]:
        """The request's status once it is no longer 202."""
        deadline = time.monotonic() + DEADLINE_S
        while (response := await self.client.get(submitted["status_url"])).status_code == 202:
            assert time.monotonic() < deadline, "request did not complete"
            await asyncio.sleep(0.005)
        assert response.status_code == 200
        status: dict[str, Any] = response.json()
        return status

    async def completes(self, submitted: dict[str, Any]) -> None:
        assert (await self.completed(submitted))["status"] == "COMPLETED"

    def state(self, submitted: dict[str, Any]) -> FalRequest:
        return self.emu.requests[submitted["request_id"]]

    async def keys(self) -> dict[str, Any]:
        document: dict[str, Any] = (await self.client.get("/.well-known/jwks.json")).json()
        return document


@dataclass
class WaveSpeedHarness(QueueHarness):
    emu: WaveSpeedEmulator

    def configure(self, **overrides: Any) -> None:
        self.emu.config = WaveSpeedEmulatorConfig(**{**FAST, **overrides})

    async def submit(
        self,
        model: str = STEP1X,
        *,
        version: str = "v3",
        webhook: bool = True,
        webhook_url: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Submit an edit and return the envelope's `data` (asserting HTTP 200 and envelope code 200)."""
        body = {"prompt": "make it red", "image": data_uri(png_bytes()), **fields}
        params = {"webhook": webhook_url or self.receiver.url} if webhook else {}
        response = await self.client.post(f"/api/{version}/{model}", json=body, params=params)
        assert response.status_code == 200, response.text
        document = response.json()
        assert (document["code"], document["message"]) == (200, "success")
        data: dict[str, Any] = document["data"]
        return data

    async def result(self, url: str) -> dict[str, Any]:
        response = await self.client.get(url)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    async def finished(self, submitted: dict[str, Any], *, seen: list[str] | None = None) -> dict[str, Any]:
        """Poll urls.get until completed or failed; `seen` collects every status observed, in order."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            data = await self.result(submitted["urls"]["get"])
            if seen is not None and (not seen or seen[-1] != data["status"]):
                seen.append(data["status"])
            if data["status"] in {"completed", "failed"}:
                return data
            assert time.monotonic() < deadline, "prediction did not finish"
            await asyncio.sleep(0.005)

    async def completes(self, submitted: dict[str, Any]) -> None:
        assert (await self.finished(submitted))["status"] == "completed"

    def state(self, submitted: dict[str, Any]) -> Prediction:
        return self.emu.predictions[submitted["id"]]

    async def secret(self) -> str:
        secret: str = (await self.result("/api/v3/webhook/secret"))["secret"]
        return secret


@contextlib.asynccontextmanager
async def wavespeed_client(root: str, headers: dict[str, str] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client on the WaveSpeed emulator's mount under `root`."""
    async with httpx.AsyncClient(base_url=f"{root}/wavespeed", headers=headers, trust_env=False) as client:
        yield client


HarnessT = TypeVar("HarnessT", bound=QueueHarness)


@contextlib.asynccontextmanager
async def switched_in(
    servers: SwitchedServers, emu: Any, app: ASGIApp, prefix: str, auth: dict[str, str], make: Callable[..., HarnessT]
) -> AsyncIterator[HarnessT]:
    """`app` (serving `emu`) installed on the module's Switch for the block, the receiver reset; then the
    receiver's gates are released, the emulator closed and the Switch emptied."""
    servers.receiver.reset()
    servers.switch.app = app
    try:
        async with httpx.AsyncClient(base_url=f"{servers.root}{prefix}", headers=auth, trust_env=False) as client:
            yield make(emu, client, servers.receiver, servers.root)
    finally:
        servers.receiver.release()  # a failed test leaves no input fetch hanging
        await emu.aclose()
        servers.switch.app = None


def fal_harness(servers: SwitchedServers) -> contextlib.AbstractAsyncContextManager[FalHarness]:
    """A fresh fal emulator (quick timings) on the Switch, and a FalHarness on it."""
    emu = FalEmulator(FalEmulatorConfig(**FAST))
    return switched_in(servers, emu, create_emulator_app(fal=emu), "/fal", FAL_AUTH, FalHarness)


def wavespeed_harness(servers: SwitchedServers) -> contextlib.AbstractAsyncContextManager[WaveSpeedHarness]:
    """A fresh WaveSpeed emulator (quick timings) on the Switch, and a WaveSpeedHarness on it."""
    emu = WaveSpeedEmulator(WaveSpeedEmulatorConfig(**FAST))
    return switched_in(servers, emu, mounted(emu, "/wavespeed"), "/wavespeed", WAVESPEED_AUTH, WaveSpeedHarness)
