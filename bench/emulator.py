"""The provider emulators in a process of their own, for benchmarks: `python -m bench.emulator --port N`.

`receiver emulate` with the fal emulator's timings set from the command line and no access log, so that a
benchmark's load on the emulator (its Pillow edits, its signed webhooks) never shares a core with the
driver or the receiver. Serves `GET /healthz` like `receiver emulate`.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop

from receiver.emulators import create_emulator_app
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.web.asgi_server import bind_socket, make_server, setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queue-s", type=float, default=0.1, help="seconds a fal request stays IN_QUEUE")
    parser.add_argument("--inference-s", type=float, default=0.4, help="seconds a fal request stays IN_PROGRESS")
    parser.add_argument("--time-scale", type=float, default=0.01, help="multiplies fal's webhook retry delays")
    args = parser.parse_args()
    setup_logging("warning")
    config = FalEmulatorConfig(queue_s=args.queue_s, inference_s=args.inference_s, time_scale=args.time_scale)
    app = create_emulator_app(fal=FalEmulator(config))
    server = make_server(app, log_level="warning", access_log=False)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(server.serve(sockets=[bind_socket(args.host, args.port)]))


if __name__ == "__main__":
    main()
