"""Fixtures of the emulator tests: servers that outlive single tests, for the fal and WaveSpeed families."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from receiver.web.asgi_server import running_server
from tests.helpers.receivers import HookReceiver
from tests.helpers.servers import Switch, SwitchedServers, tcp_socket


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
