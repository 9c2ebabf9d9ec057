"""A `GET /healthz` probe in its own process beside a server under load: when each probe was answered and how
long it took. Being a separate process, the load's own client work cannot slow it. `bench.bodies` reads its
latencies; the tests of huge bodies only that it kept being answered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench.processes import ServerProcess

PROBE = """
import http.client, json, sys, time
port, stop = int(sys.argv[1]), sys.argv[2]
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
answers = []
while True:
    began = time.monotonic()
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"/healthz answered {response.status}")
    answered = time.monotonic()
    answers.append([answered, answered - began])
    if len(answers) == 1:
        print("ready", flush=True)
    try:
        open(stop).close()
        break
    except FileNotFoundError:
        time.sleep(0.02)
print(json.dumps(answers))
"""
BOUND_S = 60.0  # bound on the probe's start and end; never a figure


@dataclass
class Probed:
    """What the probe saw: for each probe, when it was answered (`time.monotonic()`, which is the same clock in
    every process on Linux) and how long the answer took, in seconds."""

    answers: list[tuple[float, float]]

    def answered_between(self, began: float, ended: float) -> int:
        """How many probes were answered in `[began, ended]` (monotonic times taken by the caller)."""
        return sum(began <= at <= ended for at, _ in self.answers)

    def figures(self) -> dict[str, float | int]:
        """Count, median, p99 and worst answer time (ms): the benchmark's figures."""
        took = sorted(seconds * 1000 for _, seconds in self.answers)
        return {
            "probes": len(took),
            "p50_ms": round(statistics.median(took), 1),
            "p99_ms": round(took[min(len(took) - 1, round(0.99 * (len(took) - 1)))], 1),
            "max_ms": round(took[-1], 1),
        }


class HealthzProbe:
    """`GET /healthz` on `port` in a loop (every 20 ms, one keep-alive connection, 30 s timeout) from its own
    process: `start` returns once the first probe was answered, `finish` ends it and returns what it saw (and
    fails if any probe was not answered 200); `close` in a `finally` ends it in any case."""

    def __init__(self, process: asyncio.subprocess.Process, stop_path: Path) -> None:
        self.process = process
        self.stop_path = stop_path

    @classmethod
    async def start(cls, port: int, workdir: Path) -> HealthzProbe:
        stop_path = workdir / "stop-probe"
        stop_path.unlink(missing_ok=True)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROBE, str(port), str(stop_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        try:
            first = await asyncio.wait_for(process.stdout.readline(), BOUND_S)
        except TimeoutError:
            first = b""
        if first != b"ready\n":
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            _, err = await process.communicate()
            raise RuntimeError(f"the /healthz probe never got its first answer: {err.decode(errors='replace')[-2000:]}")
        return cls(process, stop_path)

    async def finish(self) -> Probed:
        self.stop_path.touch()
        out, err = await asyncio.wait_for(self.process.communicate(), BOUND_S)
        if self.process.returncode != 0:
            raise AssertionError(f"a /healthz probe failed: {err.decode(errors='replace')[-2000:]}")
        return Probed([(at, took) for at, took in json.loads(out)])

    async def close(self) -> None:
        self.stop_path.touch()
        if self.process.returncode is None:
            await self.process.communicate()  # reads its output, which could otherwise fill the pipe


class ProbedServer:
    """A `receiver serve` process (`server`) and, from `start_probe` on (where the load begins, at `began`), a
    /healthz probe beside it."""

    def __init__(self, server: ServerProcess, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.probe: HealthzProbe | None = None
        self.began = 0.0

    async def start_probe(self) -> None:
        self.probe = await HealthzProbe.start(self.server.port, self.workdir)
        self.began = time.monotonic()

    async def finish(self) -> Probed:
        """End the probe: what it saw (fails if any probe was not answered 200)."""
        assert self.probe is not None, "the probe was never started"
        return await self.probe.finish()


@contextlib.asynccontextmanager
async def probed_server(env: dict[str, str], port: int, workdir: Path) -> AsyncIterator[ProbedServer]:
    """`receiver serve` with `env` on `port` (its log `serve.log` in `workdir`) for the block, the probe the block
    starts beside it; then the probe is ended and the server stopped (SIGTERM)."""
    server = ServerProcess(env, port, cwd=workdir, log_path=workdir / "serve.log")
    await server.start()
    probed = ProbedServer(server, workdir)
    try:
        yield probed
    finally:
        if probed.probe is not None:
            await probed.probe.close()
        await server.stop(signal.SIGTERM)
