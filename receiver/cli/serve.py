"""`receiver serve`: the web app, the task runner and the reconciler in one event loop."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn

from receiver.app import create_app
from receiver.notify.redaction import redact_logs
from receiver.settings import Settings
from receiver.support.collector import freeze_startup_objects
from receiver.support.heap import pin_mmap_threshold
from receiver.support.private_paths import shared_dir_warning
from receiver.web.asgi_server import bind_socket, make_server
from receiver.wiring import open_services

log = logging.getLogger(__name__)


async def serve_forever(settings: Settings, *, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; then stop taking requests, finish in-flight tasks, close the store."""
    redact_logs()  # idempotent: the CLI has done it already, other callers may not have
    pin_mmap_threshold()  # large webhook and API bodies: give their memory back (see receiver.support.heap)
    for warning in startup_warnings(settings):
        log.warning("%s", warning)
    sock = bind_socket(host, port)
    async with open_services(settings) as services, services.workers():
        server = make_server(create_app(services), log_level=settings.log_level, access_log=False)
        freeze_startup_objects()  # full collections then skip start-up's objects (see receiver.support.collector)
        log.info("receiver listening on %s:%d, public URL %s", host, sock.getsockname()[1], settings.public_url)
        with sigterm_returns(server):
            await server.serve(sockets=[sock])


def startup_warnings(settings: Settings) -> list[str]:
    """Configuration that works but leaves a door open, said once at start-up."""
    warnings = []
    if settings.fal_key is not None and not settings.fal_user_id:
        warnings.append(
            "FAL_KEY is set but RECEIVER_FAL_USER_ID is not: fal signs webhooks for every fal account with the"
            " same keys, so anyone holding a leaked webhook URL and any fal account can complete a job whose"
            " submit answer was lost; set RECEIVER_FAL_USER_ID to your fal user id"
        )
    shared = shared_dir_warning(settings.data_dir, "RECEIVER_DATA_DIR")
    if shared:
        warnings.append(shared)
    return warnings


@contextlib.contextmanager
def sigterm_returns(server: uvicorn.Server) -> Iterator[None]:
    """Let a SIGTERM end `server.serve()` and nothing more.

    uvicorn handles SIGTERM itself (graceful HTTP shutdown), then restores the previous handler and raises
    the signal again. With the default handler that kills the process right there, before the task runner
    finishes its in-flight tasks and the store is closed (exit status -15). This handler, in place around
    `serve()`, turns that re-raise into a plain return (and stops the server should a SIGTERM come before
    uvicorn installed its own); a second SIGTERM after `serve()` gets the previous handler back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only reach the main thread; uvicorn does not capture them elsewhere either
        return

    def stop_serving(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, stop_serving)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
