"""`receiver serve`: the web app, the worker (task runner, reconciler, retention), or both (see
`receiver.cli.roles`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

from receiver.cli.roles import READY_TIMEOUT_S, Role, bind_to_parent, supervised, watch_parent, worker_argv
from receiver.notify.redaction import redact_logs
from receiver.settings import Settings
from receiver.storage.backends import migrate
from receiver.support.collector import freeze_startup_objects
from receiver.support.heap import pin_mmap_threshold
from receiver.support.private_paths import shared_dir_warning
from receiver.wiring import Services, open_services

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)


async def serve_forever(
    settings: Settings,
    *,
    host: str,
    port: int,
    role: Role = Role.ALL,
    reuse_port: bool = False,
    parent_pid: int | None = None,
    ready_fd: int | None = None,
) -> None:
    """Serve `role` until SIGINT/SIGTERM; then stop taking requests, stop the worker (its in-flight tasks
    finish), close the store. `parent_pid`: this worker is the child of that `--role all` process, which
    reads `ready_fd` to learn that it runs."""
    redact_logs()  # idempotent: the CLI has done it already, other callers may not have
    pin_mmap_threshold()  # large webhook and API bodies: give their memory back (see receiver.support.heap)
    if role is Role.WORKER:
        await work_forever(settings, parent_pid=parent_pid, ready_fd=ready_fd)
    else:
        await web_forever(settings, host=host, port=port, with_worker=role is Role.ALL, reuse_port=reuse_port)


async def web_forever(settings: Settings, *, host: str, port: int, with_worker: bool, reuse_port: bool) -> None:
    """`--role web` (and `all`, `with_worker`: with a worker child, started as early as it may be and
    running before this process serves, so that `receiver serve` answers once all of it runs; stopped
    after the HTTP server, before the store)."""
    # The web app's imports are the web roles' own: a worker starts faster without them.
    from receiver.app import create_app
    from receiver.web.asgi_server import bind_socket, make_server

    for warning in startup_warnings(settings):
        log.warning("%s", warning)
    sock = bind_socket(host, port, reuse_port=reuse_port)
    sock.set_inheritable(False)  # a worker child must not hold it (uvloop's spawn keeps inheritable ones)
    async with contextlib.AsyncExitStack() as stack:
        worker = None
        if with_worker:
            # What the child must not race this process for: the secret key (made once) and the schema.
            settings.resolve_secret_key()
            await asyncio.to_thread(migrate, settings.database_url)
            worker = await stack.enter_async_context(supervised(worker_argv(os.getpid())))
        async with open_services(settings) as services, services.woken_by_others(runner=False):
            server = make_server(create_app(services), log_level=settings.log_level, access_log=False)
            freeze_startup_objects()  # full collections then skip start-up's objects (see receiver.support.collector)
            role = Role.ALL if with_worker else Role.WEB
            log.info(
                "receiver %s listening on %s:%d, public URL %s", role, host, sock.getsockname()[1], settings.public_url
            )
            if worker is not None and not await worker.wait_ready():
                # Serve anyway: webhooks are acknowledged and kept; the supervisor keeps restarting it.
                log.error("the worker process is not running after %.0f s; serving without it", READY_TIMEOUT_S)
            try:
                with stop_signals_return(server):
                    await server.serve(sockets=[sock])
            finally:
                if worker is not None:
                    await worker.stop()  # HTTP first, then the worker (its tasks finish), then the store


async def work_forever(settings: Settings, *, parent_pid: int | None = None, ready_fd: int | None = None) -> None:
    """`--role worker`: the task runner, the reconciler and retention, no HTTP listener, until SIGTERM or
    SIGINT (as the child of `--role all`: SIGTERM from the parent, or the parent's end)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if parent_pid is not None and not bind_to_parent(parent_pid):
        log.warning("the parent process %d is gone already; not starting", parent_pid)
        return
    handled = [signal.SIGTERM] if parent_pid is not None else [signal.SIGTERM, signal.SIGINT]
    if parent_pid is not None:
        # Ctrl-C reaches the whole process group: the parent orders the stop (web first, then this one).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in handled:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with (
            open_services(settings) as services,
            services.woken_by_others(runner=True),
            services.workers(),
            metrics_listener(services),
        ):
            log.info("receiver worker started (pid %d): task runner, reconciler, retention", os.getpid())
            if ready_fd is not None:
                os.write(ready_fd, b"1")
                os.close(ready_fd)
            watchdog = None if parent_pid is None else asyncio.create_task(watch_parent(parent_pid, stop))
            await stop.wait()
            log.info("receiver worker stopping: letting in-flight tasks finish")
            if watchdog is not None:
                watchdog.cancel()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
    log.info("receiver worker stopped")


def metrics_listener(services: Services) -> contextlib.AbstractAsyncContextManager[object]:
    """A worker's `GET /metrics` listener when `RECEIVER_WORKER_METRICS_PORT` is set (its web imports only then)."""
    if services.settings.worker_metrics_port is None:
        return contextlib.nullcontext()
    from receiver.web.routes.metrics import worker_metrics

    return worker_metrics(services)


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
def stop_signals_return(server: uvicorn.Server) -> Iterator[None]:
    """Let a SIGTERM or SIGINT end `server.serve()` and nothing more.

    uvicorn handles both itself (graceful HTTP shutdown), then restores the previous handlers and raises
    the signal again. With the default SIGTERM handler that kills the process right there, before the
    worker finishes its in-flight tasks and the store is closed (exit status -15); asyncio's SIGINT handler
    cancels the main task, which cuts the worker's graceful stop short. These handlers, in place around
    `serve()`, turn that re-raise into a plain return (and stop the server should a signal come before
    uvicorn installed its own); a second signal after `serve()` gets the previous handler back (a second
    Ctrl-C stops at once).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only reach the main thread; uvicorn does not capture them elsewhere either
        return

    def stop_serving(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {signum: signal.signal(signum, stop_serving) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
