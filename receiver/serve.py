"""`receiver serve`: the web app, the task runner and the reconciler in one event loop."""

from __future__ import annotations

import logging

from receiver.app import create_app
from receiver.servers import bind_socket, make_server
from receiver.services import open_services
from receiver.settings import Settings

log = logging.getLogger(__name__)


async def serve_forever(settings: Settings, *, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; then stop taking requests, finish in-flight tasks, close the store."""
    sock = bind_socket(host, port)
    async with open_services(settings) as services, services.workers():
        server = make_server(create_app(services), log_level=settings.log_level, access_log=False)
        log.info("receiver listening on %s:%d, public URL %s", host, sock.getsockname()[1], settings.public_url)
        await server.serve(sockets=[sock])
