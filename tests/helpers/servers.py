"""Small servers and sockets on loopback for the edges of HTTP: peers that never answer, ports that refuse,
an app mounted with its lifespan, and a switch that lets one server outlive the apps of single tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.helpers.receivers import HookReceiver


class Servable(Protocol):
    """An emulator: an ASGI app and the lifespan it needs."""

    @property
    def app(self) -> ASGIApp: ...

    def running(self) -> contextlib.AbstractAsyncContextManager[Any]: ...


def mounted(emulator: Servable, prefix: str, *routes: BaseRoute) -> Starlette:
    """`emulator` under `prefix` beside `routes`, its lifespan run by the outer app (Starlette skips a mount's)."""
    return Starlette(routes=[Mount(prefix, app=emulator.app), *routes], lifespan=lambda app: emulator.running())


def tcp_socket() -> socket.socket:
    """A listening loopback socket whose accepted connections asyncio sets TCP_NODELAY on.

    asyncio only sets it when the socket's proto is IPPROTO_TCP; with proto 0 every keep-alive
    request pays ~40 ms of Nagle plus delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class Switch:
    """Serves whichever app the current test installed, so the servers outlive single tests (the apps' own
    lifespans are exercised by the tests that serve them themselves)."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.app is not None
        await self.app(scope, receive, send)


@contextlib.contextmanager
def refusing_url() -> Iterator[str]:
    """The URL of a loopback port that is bound but not listening, so connections are refused (and, held
    for the block, no other server can take the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


class BlackHole:
    """A TCP server on loopback that accepts every connection, reads what comes, and never answers; with
    `hang_first`, only the first that many requests hang and later ones get a 204 (`answered` counts them)."""

    def __init__(self, hang_first: int | None = None) -> None:
        self.hang_first = hang_first
        self.connections = 0
        self.requests = 0
        self.answered = 0
        self.url = ""
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._swallow, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                self.requests += 1
                if self.hang_first is None or self.requests <= self.hang_first:
                    while await reader.read(65536):
                        pass
                    return
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                self.answered += 1

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """The base URL of a `BlackHole`: every request is read whole and never answered."""
    hole = BlackHole()
    await hole.start()
    try:
        yield hole.url
    finally:
        await hole.close()


@dataclass
class SwitchedServers:
    """A webhook receiver and a `Switch` on loopback, for modules that install one emulator app per test."""

    receiver: HookReceiver  # where the emulator delivers its webhooks
    switch: Switch  # serves the app the current test installed
    root: str  # the switch's base URL
