"""The emulators over TLS: in the test's loop with a generated pair, or as `receiver emulate --tls` in a process."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.types import ASGIApp

from receiver.emulators.tls import TlsFiles, tls_server
from receiver.web.asgi_server import bind_socket
from tests.helpers.processes import RECEIVER, serve_env
from tests.helpers.waiting import until


def trusting(files: TlsFiles) -> ssl.SSLContext:
    """A client context that trusts the emulators' certificate (and nothing else)."""
    return ssl.create_default_context(cafile=str(files.certfile))


@contextlib.asynccontextmanager
async def running_tls_server(app: ASGIApp, files: TlsFiles) -> AsyncIterator[str]:
    """Serve `app` over https on a free loopback port for the block; yields `https://127.0.0.1:PORT`."""
    sock = bind_socket("127.0.0.1", 0)
    server = tls_server(app, files)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
        yield f"https://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


async def answers(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).status_code == 200
    except httpx.TransportError:
        return False


@dataclass(frozen=True)
class EmulateProcess:
    root: str  # https://127.0.0.1:PORT
    certfile: Path
    printed: str  # what `receiver emulate --tls` printed before serving


@contextlib.asynccontextmanager
async def emulate_tls(workdir: Path) -> AsyncIterator[EmulateProcess]:
    """`receiver emulate --tls --tls-dir WORKDIR/tls --port 0` in a process, read up to its last hint line;
    yielded once it answers `/healthz` over https; stopped with SIGINT after the block (its exit code checked)."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        *RECEIVER, "emulate", "--tls", "--tls-dir", str(workdir / "tls"), "--port", "0",
        env=serve_env(workdir), cwd=workdir,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        printed = ""
        while "openai.OpenAI(" not in printed:
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()  # a hang guard only
            assert line, f"receiver emulate --tls ended early:\n{printed}"
            printed += line
        root = re.findall(r"^emulators on (https://127\.0\.0\.1:\d+):", printed, re.MULTILINE)[0]
        certfile = Path(re.findall(r"export SSL_CERT_FILE=(\S+) ", printed)[0])
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=certfile), timeout=10) as client:
            await until(lambda: answers(client, f"{root}/healthz"), what="receiver emulate --tls serving")
        yield EmulateProcess(root, certfile, printed)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 30)
    assert code == 0
