"""One peer that hangs costs only its own work: a black-hole delivery target, or provider, beside healthy ones."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.servers import running_server
from tests.conftest import SMALL_PNG_URI, Stack, StackFactory

JOBS = 30
NOTIFY_TIMEOUT_S = 10.0  # a black-hole delivery holds its slot this long before it can fail


class BlackHole:
    """A TCP server on loopback that accepts every connection, reads what comes, and never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self.url = ""
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._swallow, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while await reader.read(65536):
            pass

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class Recorder:
    """A healthy webhook subscriber on loopback: answers 204 at once and records each event type and job."""

    url: str = ""
    events: list[tuple[str, str]] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        event = json.loads(await request.body())
        self.events.append((event["type"], event["data"]["job"]["id"]))
        return Response(status_code=204)

    def succeeded(self) -> set[str]:
        return {job_id for kind, job_id in self.events if kind == "job.succeeded"}


@pytest.fixture
async def black_hole() -> AsyncIterator[BlackHole]:
    hole = BlackHole()
    await hole.start()
    yield hole
    await hole.close()  # before the stack stops: the hanging requests then end at once


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    healthy = Recorder()
    async with running_server(Starlette(routes=[Route("/hook", healthy.handle, methods=["POST"])])) as url:
        healthy.url = f"{url}/hook"
        yield healthy


async def until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


async def subscribe(stack: Stack, url: str) -> str:
    response = await stack.client.post("/v1/subscriptions", json={"kind": "webhook", "url": url})
    assert response.status_code == 201, response.text
    sub_id: str = response.json()["id"]
    return sub_id


async def subscription(stack: Stack, sub_id: str) -> dict[str, Any]:
    response = await stack.client.get("/v1/subscriptions")
    assert response.status_code == 200, response.text
    [found] = [sub for sub in response.json()["subscriptions"] if sub["id"] == sub_id]
    return dict(found)


async def test_black_hole_subscriber_costs_only_its_own_deliveries(
    make_stack: StackFactory, recorder: Recorder, black_hole: BlackHole
) -> None:
    """Beside a subscriber that never answers, every job succeeds and the healthy subscriber gets every
    job.succeeded before any black-hole attempt could time out; then the black hole's circuit opens."""
    stack = await make_stack(notify_timeout_s=NOTIFY_TIMEOUT_S, notify_breaker_failures=3)
    hole_id = await subscribe(stack, black_hole.url)
    healthy_id = await subscribe(stack, recorder.url)
    jobs = [(await stack.create_job())["id"] for _ in range(JOBS)]

    await until(lambda: recorder.succeeded() == set(jobs), timeout_s=60, what="every job.succeeded delivered")
    # No black-hole attempt has ended yet: the healthy deliveries did not wait for a slot it freed.
    response = await stack.client.get("/v1/deliveries", params={"subscription_id": hole_id, "limit": 100})
    hole_deliveries = response.json()["deliveries"]
    assert len(hole_deliveries) == JOBS
    assert all(delivery["attempts"] == 0 for delivery in hole_deliveries)
    per_target = stack.services.settings.notify_concurrency_per_target
    await until(lambda: black_hole.connections >= 1, timeout_s=10, what="the black hole is being called")
    assert black_hole.connections <= per_target  # only its own lane's slots are held
    assert [(await stack.job(job_id))["status"] for job_id in jobs] == ["succeeded"] * JOBS

    async def circuit() -> dict[str, Any]:
        return dict((await subscription(stack, hole_id))["circuit"])

    deadline = time.monotonic() + 60
    while (state := await circuit())["state"] != "open":
        assert time.monotonic() < deadline, f"the circuit never opened: {state}"
        await asyncio.sleep(0.1)
    assert state["consecutive_failures"] >= 3
    assert state["until"] > time.time()
    assert "no answer" in state["last_error"]
    # Sent at most: its lane's slots, plus one more for each of the failures before the one that opened it.
    assert black_hole.connections <= per_target + 3 - 1
    healthy = await subscription(stack, healthy_id)
    assert healthy["circuit"] == {"state": "closed", "until": None, "consecutive_failures": 0, "last_error": None}


async def test_hanging_provider_costs_only_its_own_jobs(make_stack: StackFactory, black_hole: BlackHole) -> None:
    """With fal's queue accepting connections and never answering and 30 fal jobs waiting on it, StepFun jobs
    created afterwards all succeed while every fal submit still hangs."""
    stack = await make_stack(fal_queue_url=black_hole.url, provider_timeout_s=120.0)
    fal_jobs = [(await stack.create_job())["id"] for _ in range(JOBS)]
    await until(lambda: black_hole.connections >= 1, timeout_s=10, what="fal's queue is being called")
    step_jobs = [
        (await stack.create("stepfun", "step-image-edit-2", {"prompt": "red", "image": SMALL_PNG_URI}))["id"]
        for _ in range(10)
    ]
    for job_id in step_jobs:
        final = await stack.wait_final(job_id, timeout_s=60)
        assert final["status"] == "succeeded", final["error"]
    assert [(await stack.job(job_id))["status"] for job_id in fal_jobs] == ["pending"] * JOBS
    assert black_hole.connections <= stack.services.settings.task_provider_concurrency
