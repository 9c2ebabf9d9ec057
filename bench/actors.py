"""The crash harness's actors besides the hostile sender: the job creator, the fault shuffler, the API watcher
and the killer."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from bench.processes import ServerProcess
from bench.rig import JOB_TIMEOUT_ENV, MODELS, job_body, tiny_png
from bench.snapshot import Where, leased_kinds
from receiver.emulators.fal import FalEmulator

PROMPTS = ("make it red", "blur it", "flip it", "black and white", "sketch it", "make it blue")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
OPEN = ("pending", "submitted", "running")
RANK = {"pending": 0, "submitted": 1, "running": 2, "succeeded": 3, "failed": 3, "cancelled": 3}


@dataclass
class Load:
    acked: dict[str, int] = field(default_factory=dict)  # job id -> sequence number
    unknown: int = 0  # the request may have reached the server, but no answer came (killed mid-call)
    refused: list[str] = field(default_factory=list)
    connect_retries: int = 0


async def create_jobs(client: httpx.AsyncClient, load: Load, rng: random.Random, *, jobs: int, window_s: float) -> None:
    """Create `jobs` jobs at random moments of the first `window_s` seconds, concurrently, both fal models in
    turn. A connection refused (server down) is retried; a request cut after sending is not (it may exist)."""
    image = tiny_png()
    started = time.monotonic()
    moments = sorted(rng.uniform(0, window_s) for _ in range(jobs))

    async def create(seq: int, at: float) -> None:
        await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
        body = job_body(MODELS[seq % 2], rng.choice(PROMPTS), image, metadata={"chaos_seq": seq})
        for _ in range(300):  # bounded: about 30 s of connection refusals
            try:
                response = await client.post("/v1/jobs", json=body)
            except httpx.ConnectError:
                load.connect_retries += 1
                await asyncio.sleep(0.1)
                continue
            except httpx.TransportError:
                load.unknown += 1
                return
            if response.status_code == 202:
                load.acked[response.json()["id"]] = seq
            else:
                load.refused.append(f"{response.status_code} {response.text[:200]}")
            return
        load.refused.append("server unreachable for 30 s")

    await asyncio.gather(*(create(seq, at) for seq, at in enumerate(moments)))


async def shuffle_faults(emulator: FalEmulator, rng: random.Random, stop: asyncio.Event) -> None:
    """Re-roll the emulator's delivery faults every 0.2 s: each request keeps the config it was submitted
    under, so the load gets a mix of duplicate, late and dropped webhooks and model errors."""
    while not stop.is_set():
        emulator.config = emulator.config.merged(
            {
                "duplicate_delivery": rng.random() < 0.5,
                "late_delivery_s": rng.choice((0.0, 0.0, 0.0, 0.3, 1.0, 3.0)),
                "no_delivery": rng.random() < 0.08,
                "model_error": rng.random() < 0.08,
            }
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


class Watcher:
    """Polls `GET /v1/jobs` and checks every job's status only moves forward and its request id never changes."""

    def __init__(self) -> None:
        self.last: dict[str, str] = {}
        self.bound: dict[str, str] = {}  # job id -> provider_request_id, once the API showed one
        self.violations: list[str] = []
        self.polls = 0
        self.failed_polls = 0
        self.changes = 0

    def observe(self, job: dict[str, Any]) -> None:
        job_id, status, request_id = job["id"], job["status"], job.get("provider_request_id")
        before = self.last.get(job_id)
        if before is not None and before != status:
            self.changes += 1
            if before in TERMINAL or RANK[status] < RANK[before]:
                self.violations.append(f"job {job_id} moved backwards or out of a final state: {before} -> {status}")
        if before is None or before != status:
            self.last[job_id] = status
        bound = self.bound.get(job_id)
        if request_id:
            if bound is not None and bound != request_id:
                self.violations.append(f"job {job_id} changed its provider request id: {bound} -> {request_id}")
            self.bound[job_id] = request_id
        elif bound is not None:
            self.violations.append(f"job {job_id} lost its provider request id {bound}")

    async def poll_once(self, client: httpx.AsyncClient) -> None:
        cursor: str | None = None
        for _ in range(100):  # bounded paging
            params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
            response = await client.get("/v1/jobs", params=params)
            if response.status_code != 200:
                self.failed_polls += 1
                return
            page = response.json()
            for job in page["jobs"]:
                self.observe(job)
            cursor = page["next_cursor"]
            if not cursor:
                break
        self.polls += 1

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll_once(client)
            except httpx.TransportError:
                self.failed_polls += 1  # the server is down (killed) right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.15)


async def kill_at_random(
    server: ServerProcess,
    db_path: Where,
    rng: random.Random,
    *,
    kills: int,
    window_s: float,
    min_up_s: float,
    aim_s: float,
    job_timeout_s: float,
    log: Callable[[str], None],
) -> tuple[list[tuple[float, list[str]]], float]:
    """SIGKILL the server at `kills` random moments of the window, restarting it at once each time; returns
    (seconds into the window, kinds of the tasks leased) of each kill, and the seconds the server was down.

    From each moment the killer waits up to `aim_s` for a task to be leased, so most kills land in the
    middle of a handler (a submit, an image fetch, a delivery) rather than on an idle server.

    `job_timeout_s` is the time a job gets while a server is up: the server counts a job's age on the wall
    clock, down time included, so each restart lengthens its RECEIVER_JOB_TIMEOUT_S by the time it was down
    (this restart's start-up taken as long as the slowest so far). Start-ups take seconds on a busy machine,
    and a job that only a poll can finish must not time out for want of a server to poll with."""
    started = time.monotonic()
    moments = sorted(rng.uniform(0.5, max(0.6, window_s - 0.5)) for _ in range(kills))
    up_since = started
    down_s = 0.0
    killed: list[tuple[float, list[str]]] = []
    for moment in moments:
        now = time.monotonic()
        await asyncio.sleep(max(0.0, max(started + moment, up_since + min_up_s) - now))
        aim_until = time.monotonic() + aim_s
        leased: list[str] = []
        while time.monotonic() < aim_until:
            with contextlib.suppress(sqlite3.Error, psycopg.Error):
                leased = await asyncio.to_thread(leased_kinds, db_path)
            if leased:
                break
            await asyncio.sleep(0.003)
        await server.stop(signal.SIGKILL)
        down_at = time.monotonic()
        killed.append((round(down_at - started, 2), sorted(leased)))
        log(f"  kill -9 at t={killed[-1][0]:.2f}s with {', '.join(leased) or 'no task'} leased; restarting")
        server.env[JOB_TIMEOUT_ENV] = f"{job_timeout_s + down_s + max(server.start_s):.3f}"
        await server.start()
        up_since = time.monotonic()
        down_s += up_since - down_at
    return killed, down_s
