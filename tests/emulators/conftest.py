"""Fixtures of the emulator tests: servers that outlive single tests, for the fal and WaveSpeed families; a
client on the synchronous emulators (StepFun, Modelverse)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from receiver.web.asgi_server import running_server
from tests.helpers.receivers import HookReceiver
from tests.helpers.servers import Switch, SwitchedServers, tcp_socket
from tests.helpers.sync_apis import EmulatorHarness, Served, emulator_harness_on


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def servers() -> AsyncIterator[SwitchedServers]:
    """A webhook receiver and a switch, on loopback for the whole module."""
    hooks, switch = HookReceiver(), Switch()
    async with (
        running_server(hooks.app(), sock=tcp_socket()) as hooks_base,
        running_server(switch, sock=tcp_socket()) as root,
    ):
        hooks.base = hooks_base
        yield SwitchedServers(hooks, switch, root)


@pytest_asyncio.fixture(loop_scope="module")
async def harness(served: Served) -> AsyncIterator[EmulatorHarness]:
    """A client on the module's `served` synchronous emulator, reset for the test (the fal and WaveSpeed
    modules define a `harness` of their own)."""
    async with emulator_harness_on(served) as harness:
        yield harness
