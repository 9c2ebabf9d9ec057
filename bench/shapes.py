"""Shapes of the receiver that `receiver serve` does not offer, measured against it by `bench.roles`.

`python -m bench.shapes loop --port P`: web app, task runner, reconciler and retention in ONE event loop
(what `receiver serve` was before the roles). `python -m bench.shapes thread --port P`: the web app in the
main event loop and the worker in a second thread with an event loop (and a database connection set) of
its own, in the same process. Settings come from the environment, as for `receiver serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading

from receiver.app import create_app
from receiver.cli.main import run
from receiver.cli.serve import stop_signals_return
from receiver.settings import Settings
from receiver.web.asgi_server import bind_socket, make_server, setup_logging
from receiver.wiring import open_services


async def one_loop(settings: Settings, port: int) -> None:
    sock = bind_socket("127.0.0.1", port)
    async with open_services(settings) as services, services.woken_by_others(runner=True), services.workers():
        server = make_server(create_app(services), log_level=settings.log_level)
        with stop_signals_return(server):
            await server.serve(sockets=[sock])


async def worker_in_thread(settings: Settings, port: int) -> None:
    sock = bind_socket("127.0.0.1", port)
    stop = threading.Event()

    async def work() -> None:
        async with open_services(settings) as services, services.woken_by_others(runner=True), services.workers():
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=lambda: asyncio.run(work()), name="worker-loop")
    async with open_services(settings) as services, services.woken_by_others(runner=False):
        thread.start()
        server = make_server(create_app(services), log_level=settings.log_level)
        try:
            with stop_signals_return(server):
                await server.serve(sockets=[sock])
        finally:
            stop.set()
            with contextlib.suppress(RuntimeError):
                await asyncio.to_thread(thread.join)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shape", choices=["loop", "thread"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings()
    setup_logging(settings.log_level)
    run((one_loop if args.shape == "loop" else worker_in_thread)(settings, args.port))


if __name__ == "__main__":
    main()
