"""`receiver` commands in subprocesses as a user runs them: piped, or in a terminal (a pseudo-terminal) of a given
width; and a TCP proxy whose connections a test can cut, to drop a client's connection without stopping the server."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tests.helpers.processes import RECEIVER

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


async def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`receiver ARGS` with its stdout and stderr piped (not a terminal)."""
    return await asyncio.to_thread(
        subprocess.run, [*RECEIVER, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _run_in_terminal(args: list[str], env: dict[str, str], columns: int) -> tuple[int, str]:
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    with subprocess.Popen(
        [*RECEIVER, *args],
        env={**env, "COLUMNS": str(columns), "TERM": "xterm-256color"},
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    ) as process:
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every copy of the terminal side is closed, the command is done
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(controller)
        code = process.wait(timeout=60)
    return code, ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")


async def run_in_terminal(*args: str, env: dict[str, str], columns: int) -> tuple[int, str]:
    """`receiver ARGS` in a pseudo-terminal `columns` wide (and COLUMNS set so): exit code and what the terminal
    showed, colours stripped."""
    return await asyncio.to_thread(_run_in_terminal, list(args), env, columns)


@dataclass
class CuttableProxy:
    """Forwards loopback TCP connections to `upstream_port`. `cut()` closes every open connection; while `held`,
    new connections are accepted but wait (unforwarded) until `release()`."""

    upstream_port: int
    port: int = 0
    held: bool = False
    forwarded: int = 0  # connections that reached the upstream
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    first_bytes: asyncio.Event = field(default_factory=asyncio.Event)  # the upstream answered a connection

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self) -> None:
        self.held = True
        self._released = asyncio.Event()

    def release(self) -> None:
        self.held = False
        self._released.set()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, answers: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if answers:
                    self.first_bytes.set()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        try:
            if self.held:
                await self._released.wait()
            if client_writer.is_closing():
                return
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._writers.add(upstream_writer)
            self.forwarded += 1
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer, answers=False),
                self._pipe(upstream_reader, client_writer, answers=True),
            )
            self._writers.discard(upstream_writer)
        finally:
            self._writers.discard(client_writer)
            client_writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CuttableProxy]:
        server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            self.release()
            self.cut()
            await server.wait_closed()
