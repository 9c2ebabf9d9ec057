"""StepFun and Modelverse, the synchronous image APIs: each emulator served on loopback, a provider aimed at it
(`Harness`) or a plain client on its routes (`EmulatorHarness`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.routing import BaseRoute, Route

from receiver.emulators.modelverse import ModelverseEmulator, ModelverseEmulatorConfig
from receiver.emulators.stepfun import StepFunEmulator, StepFunEmulatorConfig
from receiver.emulators.sync_emulator import SyncEmulator, SyncEmulatorConfig
from receiver.images.download import FetchPolicy
from receiver.providers.modelverse import ModelverseProvider
from receiver.providers.stepfun import StepFunProvider
from receiver.providers.sync_api import SyncApiProvider
from receiver.web.asgi_server import running_server
from tests.helpers.clock import Clock
from tests.helpers.images import image_route, png_data_uri
from tests.helpers.jobs import make_job
from tests.helpers.servers import mounted

SMALL_URI = png_data_uri(32, 24)
on_shared_loop = pytest.mark.asyncio(loop_scope="module")  # the tests that use the module's `served` emulator


@dataclass(frozen=True)
class SyncApi:
    """One synchronous image API under test; `name` is also its emulator's mount prefix."""

    name: str
    provider: type[SyncApiProvider[Any]]
    emulator: Callable[..., SyncEmulator[Any]]
    config: Callable[..., SyncEmulatorConfig]
    key: str
    model: str
    policy: FetchPolicy  # how providers under test fetch URL inputs, unless a test says otherwise

    def offline_provider(self, *, key: str | None = None) -> SyncApiProvider[Any]:
        """A provider aimed at nothing, for what needs no call (facts, input checks)."""
        secret = SecretStr(key) if key is not None else None
        return self.provider(httpx.AsyncClient(), base_url="x", key=secret, timeout_s=120, fetch_policy=self.policy)


STEPFUN = SyncApi(
    "stepfun",
    StepFunProvider,
    StepFunEmulator,
    StepFunEmulatorConfig,
    key="test-step-key",
    model="step-image-edit-2",
    policy=FetchPolicy(allow_private=True, timeout_s=5.0),  # StepFun's inputs are fetched by us, from loopback
)
MODELVERSE = SyncApi(
    "modelverse",
    ModelverseProvider,
    ModelverseEmulator,
    ModelverseEmulatorConfig,
    key="test-modelverse-key",
    model="stepfun-ai/step1x-edit",
    policy=FetchPolicy(),  # Modelverse fetches URL inputs itself
)


@dataclass
class Served:
    """An API's emulator on loopback, under `/{name}` beside an image host at `/images/{name}`."""

    api: SyncApi
    emu: Any  # the API's SyncEmulator subclass: tests reach its own config fields
    root: str
    clock: Clock | None  # the emulator's, when it runs on a hand-moved clock


@contextlib.asynccontextmanager
async def serving(api: SyncApi, *routes: BaseRoute, clock: Clock | None = None) -> AsyncIterator[Served]:
    """`api`'s emulator (on `clock` when given) served for the block, with `routes` beside it."""
    emu = api.emulator(clock=time.time if clock is None else clock)
    app = mounted(emu, f"/{api.name}", Route("/images/{name}", image_route), *routes)
    async with running_server(app) as root:
        yield Served(api, emu, root, clock)


@dataclass
class Harness:
    """A provider for the served emulator, on an httpx client of the test's own."""

    api: SyncApi
    emu: Any
    client: httpx.AsyncClient
    root: str

    def provider(
        self,
        *,
        base_url: str | None = None,
        key: str | EllipsisType | None = ...,
        policy: FetchPolicy | None = None,
        timeout_s: float = 30,
    ) -> SyncApiProvider[Any]:
        """The provider aimed at the emulator with the API's key (`key=None`: no key, or another key)."""
        key = self.api.key if key is ... else key
        return self.api.provider(
            self.client,
            base_url=base_url or f"{self.root}/{self.api.name}",
            key=SecretStr(key) if key is not None else None,
            timeout_s=timeout_s,
            fetch_policy=policy or self.api.policy,
        )

    async def submit(self, provider: SyncApiProvider[Any] | None = None, **input: Any) -> Any:
        """Submit a small edit (`input` overrides its fields) with `provider`, by default `self.provider()`."""
        job = make_job(self.api.name, self.api.model, {"prompt": "make it red", "image": SMALL_URI, **input})
        return await (provider or self.provider()).submit(job, webhook_url=None)


@contextlib.asynccontextmanager
async def harness_on(served: Served) -> AsyncIterator[Harness]:
    """A Harness on `served`, its emulator reset: instant answers, the API's key, no calls counted."""
    served.emu.config = served.api.config(latency_s=0.0, api_key=served.api.key)
    served.emu.calls = 0
    served.emu.received.clear()
    async with httpx.AsyncClient(trust_env=False) as client:
        yield Harness(served.api, served.emu, client, served.root)


async def submit_answered(api: SyncApi, answer: Callable[[httpx.Request], httpx.Response]) -> Any:
    """A small edit submitted to `api`'s provider on a client whose every call `answer` answers (no server)."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        base_url = f"https://api.{api.name}.test"
        provider = api.provider(
            client, base_url=base_url, key=SecretStr(api.key), timeout_s=120, fetch_policy=api.policy
        )
        job = make_job(api.name, api.model, {"prompt": "p", "image": SMALL_URI})
        return await provider.submit(job, webhook_url=None)


@dataclass
class EmulatorHarness:
    """A client on the served emulator's mount that sends the API's key, the emulator's clock and the root."""

    api: SyncApi
    emu: Any
    client: httpx.AsyncClient
    clock: Clock
    root: str

    def configure(self, **overrides: Any) -> None:
        """A fresh emulator config: instant answers, then `overrides`."""
        self.emu.config = self.api.config(**{"latency_s": 0.0, **overrides})


@contextlib.asynccontextmanager
async def emulator_harness_on(served: Served) -> AsyncIterator[EmulatorHarness]:
    """An EmulatorHarness on `served` (served on a clock), its emulator reset: the clock at now, a fresh
    config, no calls counted."""
    assert served.clock is not None, "serve the emulator on a Clock"
    served.clock.now = time.time()
    served.emu.calls = 0
    served.emu.received.clear()
    auth = {"Authorization": f"Bearer {served.api.key}"}
    async with httpx.AsyncClient(base_url=f"{served.root}/{served.api.name}", headers=auth, trust_env=False) as client:
        harness = EmulatorHarness(served.api, served.emu, client, served.clock, served.root)
        harness.configure()
        yield harness
