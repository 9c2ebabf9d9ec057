"""`receiver` in subprocesses: their environment, the server process (the benchmarks' own), and waits on it."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.processes import ServerProcess, free_port, held_port, tail

__all__ = ["RECEIVER", "ServerProcess", "cli_env", "free_port", "held_port", "serve_env", "tail", "wait_status"]

RECEIVER = [sys.executable, "-m", "receiver"]
PROVIDER_KEYS = ("FAL_KEY", "WAVESPEED_API_KEY", "STEP_API_KEY", "MODELVERSE_API_KEY")


def serve_env(workdir: Path, **extra: str) -> dict[str, str]:
    """The environment for a `receiver` subprocess: the caller's without any RECEIVER_* setting or provider key,
    the database and data dir in `workdir`, warnings-only logs; then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_") and k not in PROVIDER_KEYS}
    env.update(
        RECEIVER_DATABASE_URL=f"sqlite:///{workdir / 'receiver.db'}",
        RECEIVER_DATA_DIR=str(workdir),
        RECEIVER_LOG_LEVEL="warning",
    )
    env.update(extra)
    return env


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """`serve_env` for the CLI's tests: a quick task poll and a fal key; then `extra`."""
    return serve_env(tmp_path, RECEIVER_TASK_POLL_INTERVAL_S="0.1", FAL_KEY="cli-test-key", **extra)


async def wait_status(client: httpx.AsyncClient, job_id: str, statuses: set[str]) -> dict[str, Any]:
    """Poll `GET /v1/jobs/{id}` until the job's status is one of `statuses`; fail after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        job: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)
