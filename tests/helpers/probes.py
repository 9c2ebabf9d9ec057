"""A `/healthz` probe beside a `receiver serve` under hostile load: how long the server kept it waiting, and the
server's peak memory. The probe is a separate process, so the test's own work cannot slow it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tests.helpers.processes import free_port, serve_env, tail

TOKEN = "test-token"
MB = 1024 * 1024
PROBE_MAX_S = 0.25
PEAK_RSS_MB = 400
PROBE = """
import http.client, json, sys, time
port, stop = int(sys.argv[1]), sys.argv[2]
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
worst, count = 0.0, 0
while True:
    began = time.monotonic()
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
    worst, count = max(worst, time.monotonic() - began), count + 1
    try:
        open(stop).close()
        break
    except FileNotFoundError:
        time.sleep(0.02)
print(json.dumps({"max_s": worst, "probes": count}))
"""


def hostile_env(workdir: Path, port: int) -> dict[str, str]:
    """A token-protected server whose providers are configured but unreachable (nothing leaves the host)."""
    dead = f"http://127.0.0.1:{free_port()}"
    return serve_env(
        workdir,
        RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        RECEIVER_SECRET_KEY="test-secret",
        RECEIVER_API_TOKEN=TOKEN,
        RECEIVER_FAL_QUEUE_URL=f"{dead}/fal",
        RECEIVER_WAVESPEED_URL=f"{dead}/wavespeed",
        FAL_KEY="test-fal-key",
        WAVESPEED_API_KEY="test-wavespeed-key",
    )


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


class HealthzProbe:
    """`GET /healthz` on `port` in a loop, from its own process, from `start` until `finish` (which returns
    `{"max_s": the worst answer time, "probes": how many}`); `close` in a `finally` ends it in any case."""

    def __init__(self, process: asyncio.subprocess.Process, stop_path: Path) -> None:
        self.process = process
        self.stop_path = stop_path

    @classmethod
    async def start(cls, port: int, workdir: Path) -> HealthzProbe:
        stop_path = workdir / "stop-probe"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROBE, str(port), str(stop_path), stdout=asyncio.subprocess.PIPE
        )
        return cls(process, stop_path)

    async def finish(self) -> dict[str, Any]:
        self.stop_path.touch()
        out, _ = await asyncio.wait_for(self.process.communicate(), 30)
        figures: dict[str, Any] = json.loads(out)
        return figures

    async def close(self) -> None:
        self.stop_path.touch()
        if self.process.returncode is None:
            await self.process.wait()


def assert_loop_kept_free(figures: dict[str, Any], peak_mb: float, log_path: Path) -> None:
    """The probe ran throughout and always answered within PROBE_MAX_S; the server's peak RSS stayed under
    PEAK_RSS_MB (the figures are printed, for `pytest -s`)."""
    print(f"probe max {figures['max_s'] * 1000:.0f} ms over {figures['probes']} probes; peak RSS {peak_mb:.0f} MB")
    assert figures["probes"] > 20
    assert figures["max_s"] < PROBE_MAX_S, (figures, tail(log_path))
    assert peak_mb < PEAK_RSS_MB, peak_mb
