"""Running ASGI apps under uvicorn inside the current event loop (demo, tests, `receiver serve`), and their logging."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.types import ASGIApp

from receiver.notify.redaction import redact_logs
from receiver.observability.logs import TEXT_FORMAT, LogFormat, configure_logging

LOG_FORMAT = TEXT_FORMAT


def setup_logging(level: str, *, log_format: str = LOG_FORMAT, style: LogFormat = "text") -> None:
    """Log to stderr at `level` (`style`: text lines in `log_format`, or JSON lines), every line redacted
    (webhook tokens, bot tokens, webhook URL secrets) from the first one on: the CLI calls this before anything
    can log."""
    configure_logging(level, log_format=style, text_format=log_format)
    redact_logs()


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one (read it back with `getsockname`). `reuse_port`
    (SO_REUSEPORT) lets several processes listen on the same port, the kernel spreading connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto set: asyncio then sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_server(app: ASGIApp, *, log_level: str = "warning", access_log: bool = False) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=5,
        server_header=False,
        log_config=None,  # uvicorn's loggers propagate to the root handler: one format (receiver.observability.logs)
    )
    return uvicorn.Server(config)


@contextlib.asynccontextmanager
async def running_server(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None
) -> AsyncIterator[str]:
    """Serve `app` on `host:port` (or an already bound `sock`) for the block; yields its base URL."""
    sock = sock or bind_socket(host, port)
    host, actual_port = sock.getsockname()[:2]
    server = make_server(app)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # surfaces the start-up error
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
        yield base_url(host, actual_port)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
