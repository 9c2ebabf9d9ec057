"""Notification settings set through their RECEIVER_* variables and observed at a target: a failing
subscription disabled after RECEIVER_NOTIFY_DISABLE_AFTER_S, RECEIVER_NOTIFY_CONCURRENCY_PER_TARGET, a rotated
secret's RECEIVER_SECRET_GRACE_S, RECEIVER_CALLBACK_SECRET; and a deleted subscription hears nothing more."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.web.asgi_server import running_server
from tests.helpers.database import event_types, rows
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.stack import ClockedStack, Stack, StackFactory, subscribe
from tests.helpers.stack import open_clocked_stack as open_stack
from tests.helpers.waiting import until


@dataclass
class Target:
    """A notification target on loopback: records every POST and answers `status`; while `gate` is clear it
    holds each request (counting those in flight) until the gate is set."""

    status: int = 200
    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    most_in_flight: int = 0

    async def handle(self, request: Request) -> Response:
        self.received.append((dict(request.headers), await request.body()))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        return Response(status_code=self.status)


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    hook = Target()
    hook.gate.set()
    async with running_server(Starlette(routes=[Route("/hook", hook.handle, methods=["POST"])])) as url:
        hook.url = f"{url}/hook"
        yield hook
        hook.gate.set()  # nothing left hanging on the way out


@pytest.fixture
async def clocked(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Opens one `open_stack` (hand-moved clock, no workers) for the test; settings not given come from the
    environment (the variable under test)."""
    async with contextlib.AsyncExitStack() as exits:

        async def build(**overrides: Any) -> ClockedStack:
            return await exits.enter_async_context(open_stack(tmp_path, **overrides))

        yield build


async def subscription(stack: Stack, sub_id: str) -> dict[str, Any]:
    listed = (await stack.client.get("/v1/subscriptions")).json()["subscriptions"]
    [found] = [sub for sub in listed if sub["id"] == sub_id]
    return dict(found)


async def finished_job(stack: ClockedStack) -> str:
    """A fal job run to success: its submit run here, the emulator's webhook awaited."""
    job = await stack.create_job()
    assert await stack.services.runner.run_once() == 1
    await stack.wait_for(job["id"], lambda j: j["status"] == "succeeded")
    return str(job["id"])


async def drain(stack: Stack) -> None:
    """Run the due tasks until none is due (image copies, event fan-out, deliveries)."""
    while await stack.services.runner.run_once():
        pass


def tasks(stack: Stack, kind: str) -> list[dict[str, Any]]:
    return [dict(row) for row in rows(stack.services.db.path, "SELECT * FROM tasks WHERE kind = ? ORDER BY id", kind)]


async def test_failing_subscription_is_disabled_after_notify_disable_after(
    clocked: Callable[..., Any], target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECEIVER_NOTIFY_DISABLE_AFTER_S=100: a target failing since more than 100 s without a success is
    disabled at its next failure, and the delivery is dead; before that it stays active."""
    monkeypatch.setenv("RECEIVER_NOTIFY_DISABLE_AFTER_S", "100")
    stack = await clocked(notify_retry_scale=0.01)  # retries after 0.05 s, 3 s, 18 s, ...
    target.status = 500
    sub = await subscribe(stack, {"kind": "webhook", "url": target.url})
    job_id = await finished_job(stack)
    await drain(stack)  # the image copy, then the first attempt (500)
    assert len(target.received) == 1
    assert (await subscription(stack, sub["id"]))["status"] == "active"
    stack.clock.advance(50)
    await drain(stack)
    assert len(target.received) == 2 and (await subscription(stack, sub["id"]))["status"] == "active"
    stack.clock.advance(51)  # failing for 101 s now
    await drain(stack)
    assert len(target.received) == 3
    disabled = await subscription(stack, sub["id"])
    assert disabled["status"] == "disabled" and "failing for more than" in disabled["disabled_reason"]
    [delivery] = (await stack.client.get("/v1/deliveries", params={"job_id": job_id})).json()["deliveries"]
    assert delivery["status"] == "dead" and delivery["attempts"] == 3


async def test_notify_concurrency_per_target_caps_one_target(
    clocked: Callable[..., Any], target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECEIVER_NOTIFY_CONCURRENCY_PER_TARGET=1: with five deliveries due for one target, the runner takes four
    (four times the setting), one request is sent at a time, and the fifth waits its turn."""
    monkeypatch.setenv("RECEIVER_NOTIFY_CONCURRENCY_PER_TARGET", "1")
    stack = await clocked()
    await subscribe(stack, {"kind": "webhook", "url": target.url})
    jobs = [await stack.create_job() for _ in range(5)]
    assert await stack.services.runner.run_once() == 5  # the submits
    for job in jobs:
        await stack.wait_for(job["id"], lambda j: j["status"] == "succeeded")
    assert await stack.services.runner.run_once() == 5  # the image copies: five deliveries are now due
    assert [task["status"] for task in tasks(stack, "deliver")] == ["pending"] * 5
    target.gate.clear()
    running = asyncio.create_task(stack.services.runner.run_once())
    await until(lambda: len(target.received) == 1)
    assert sorted(task["status"] for task in tasks(stack, "deliver")) == ["leased"] * 4 + ["pending"]
    target.gate.set()  # the first answer frees the target's one slot for the other claimed deliveries
    assert await running == 4
    assert len(target.received) == 4
    assert await stack.services.runner.run_once() == 1
    assert len(target.received) == 5 and target.most_in_flight == 1
    assert [task["status"] for task in tasks(stack, "deliver")] == ["done"] * 5


async def test_rotated_secret_stops_signing_after_secret_grace(
    clocked: Callable[..., Any], target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECEIVER_SECRET_GRACE_S=60: after a rotation both secrets sign for 60 s; then only the new one does."""
    monkeypatch.setenv("RECEIVER_SECRET_GRACE_S", "60")
    stack = await clocked()
    old = await subscribe(stack, {"kind": "webhook", "url": target.url})
    new = (await stack.client.post(f"/v1/subscriptions/{old['id']}/rotate-secret")).json()
    for advance_s, signatures in [(59, 2), (2, 1)]:
        stack.clock.advance(advance_s)
        response = await stack.client.post(f"/v1/subscriptions/{old['id']}/test")
        assert response.status_code == 200 and response.json()["ok"], response.text
        headers, body = target.received[-1]
        assert len(headers["webhook-signature"].split(" ")) == signatures
        Webhook(new["secret"]).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old["secret"]).verify(body, headers)


async def test_callback_url_is_signed_with_callback_secret(
    make_stack: StackFactory, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECEIVER_CALLBACK_SECRET: per-job callback deliveries are signed with it, and the API shows it."""
    secret = "whsec_" + base64.b64encode(b"callback-secret-from-settings!!!").decode()
    monkeypatch.setenv("RECEIVER_CALLBACK_SECRET", secret)
    stack = await make_stack(notify_retry_scale=0.0001)
    assert (await stack.client.get("/v1/callback-secret")).json() == {"secret": secret}
    body = {"provider": "fal", "model": "fal-ai/stepx-edit2", "callback_url": target.url}
    body["input"] = {"prompt": "red", "image_url": SMALL_PNG_URI}
    response = await stack.client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    await until(lambda: len(target.received) == 1)
    headers, raw = target.received[0]
    event = Webhook(secret).verify(raw, headers)
    assert event["type"] == "job.succeeded" and event["data"]["job"]["id"] == response.json()["id"]


async def test_deleted_subscription_hears_nothing_more(clocked: Callable[..., Any], target: Target) -> None:
    """After DELETE /v1/subscriptions/{id}, later events make no delivery for it and nothing reaches it."""
    stack = await clocked()
    sub = await subscribe(stack, {"kind": "webhook", "url": target.url})
    await finished_job(stack)
    await drain(stack)
    assert len(target.received) == 1
    assert (await stack.client.delete(f"/v1/subscriptions/{sub['id']}")).status_code == 204
    later = await finished_job(stack)
    await drain(stack)
    assert event_types(stack.services.db.path, later) == ["job.succeeded"]  # its fan-out is done (one transaction)
    assert (await stack.client.get("/v1/deliveries", params={"job_id": later})).json()["deliveries"] == []
    assert len(target.received) == 1


async def test_delivery_pending_when_its_subscription_is_deleted_is_dropped(
    clocked: Callable[..., Any], target: Target
) -> None:
    """A delivery waiting for its retry when the subscription is deleted is never sent again: it ends dead."""
    stack = await clocked()
    target.status = 500
    sub = await subscribe(stack, {"kind": "webhook", "url": target.url})
    job_id = await finished_job(stack)
    await drain(stack)
    assert len(target.received) == 1
    assert (await stack.client.delete(f"/v1/subscriptions/{sub['id']}")).status_code == 204
    stack.clock.advance(3600)
    await drain(stack)
    [delivery] = (await stack.client.get("/v1/deliveries", params={"job_id": job_id})).json()["deliveries"]
    assert delivery["status"] == "dead" and "deleted" in delivery["last_error"]
    assert len(target.received) == 1
