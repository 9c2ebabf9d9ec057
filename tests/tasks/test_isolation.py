"""One peer that hangs costs only its own work: a black-hole delivery target, or provider, beside healthy ones."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from receiver.notify.circuits import BreakerPolicy, Circuit, CircuitState, record_attempt
from receiver.notify.subscriptions import Subscriptions
from receiver.storage.base import Transaction
from receiver.storage.sqlite import Database
from receiver.support.sealing import Sealer
from receiver.tasks.queue import Outbox
from tests.helpers.database import read_rows
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.receivers import HookReceiver
from tests.helpers.servers import BlackHole
from tests.helpers.stack import Stack, StackFactory
from tests.helpers.waiting import until

JOBS = 30
NOTIFY_TIMEOUT_S = 10.0  # a black-hole delivery holds its slot this long before it can fail
HEALTHY_WAIT_S = 60.0  # bounds the wait for the healthy subscriber's deliveries (a hang)


@pytest.fixture
async def black_hole() -> AsyncIterator[BlackHole]:
    hole = BlackHole()
    await hole.start()
    yield hole
    await hole.close()  # before the stack stops: the hanging requests then end at once


@pytest.fixture
async def recorder() -> AsyncIterator[HookReceiver]:
    """A healthy webhook subscriber on loopback: answers 204 at once and records each delivery."""
    async with HookReceiver(default_status=204).running() as healthy:
        yield healthy


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
    make_stack: StackFactory, recorder: HookReceiver, black_hole: BlackHole
) -> None:
    """Beside a subscriber that never answers, every job succeeds and the healthy subscriber gets every
    job.succeeded before any black-hole attempt could time out; then the black hole's circuit opens."""
    stack = await make_stack(notify_timeout_s=NOTIFY_TIMEOUT_S, notify_breaker_failures=3)
    hole_id = await subscribe(stack, black_hole.url)
    healthy_id = await subscribe(stack, recorder.url)
    jobs = [(await stack.create_job())["id"] for _ in range(JOBS)]

    await until(
        lambda: recorder.succeeded() == set(jobs), timeout_s=HEALTHY_WAIT_S, what="every job.succeeded delivered"
    )
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


async def test_several_black_hole_subscriptions_leave_the_healthy_one_alone(
    make_stack: StackFactory, recorder: HookReceiver, black_hole: BlackHole
) -> None:
    """Five subscriptions on one host that never answers hold only their own lanes: with the default slots
    and a connection pool of their own, the healthy subscriber still gets every job.succeeded before
    any black-hole attempt could time out."""
    # No black-hole attempt can time out while the test waits (however slow the machine), so a healthy delivery
    # that needed a slot a black-hole attempt holds could never be made: the wait below would fail.
    stack = await make_stack(notify_timeout_s=2 * HEALTHY_WAIT_S, notify_breaker_failures=50)
    holes = [await subscribe(stack, f"{black_hole.url}/hook{n}") for n in range(5)]
    await subscribe(stack, recorder.url)
    jobs = [(await stack.create_job())["id"] for _ in range(JOBS)]
    await until(
        lambda: recorder.succeeded() == set(jobs), timeout_s=HEALTHY_WAIT_S, what="every job.succeeded delivered"
    )
    for hole_id in holes:  # no black-hole attempt has ended yet: nothing waited for a slot one freed
        response = await stack.client.get("/v1/deliveries", params={"subscription_id": hole_id, "limit": 100})
        assert all(delivery["attempts"] == 0 for delivery in response.json()["deliveries"])
    assert black_hole.connections > stack.services.settings.notify_concurrency_per_target  # several lanes held


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


# --- circuit breakers ---------------------------------------------------------------------------

QUICK_BREAKER = {
    "notify_timeout_s": 0.5,
    "notify_breaker_open_s": 0.5,
    "notify_retry_scale": 0.0001,
    "notify_concurrency_per_target": 2,
}


async def test_probe_closes_the_circuit_and_parked_deliveries_go_out(make_stack: StackFactory) -> None:
    """A target that hung until its circuit opened and then answers gets one probe, closes, and every
    delivery held back meanwhile is delivered."""
    hole = BlackHole(hang_first=2)
    await hole.start()
    try:
        # One send at a time: the two that hang are the two failures that open it.
        stack = await make_stack(notify_breaker_failures=2, **{**QUICK_BREAKER, "notify_concurrency_per_target": 1})
        sub_id = await subscribe(stack, hole.url)
        jobs = [(await stack.create_job())["id"] for _ in range(6)]
        await until(lambda: hole.answered >= len(jobs), timeout_s=30, what="every delivery answered")
        response = await stack.client.get("/v1/deliveries", params={"subscription_id": sub_id})
        for _ in range(100):  # the receiver records the answer just after the target gave it
            if all(delivery["status"] == "delivered" for delivery in response.json()["deliveries"]):
                break
            await asyncio.sleep(0.05)
            response = await stack.client.get("/v1/deliveries", params={"subscription_id": sub_id})
        assert sorted(delivery["status"] for delivery in response.json()["deliveries"]) == ["delivered"] * len(jobs)
        circuit = (await subscription(stack, sub_id))["circuit"]
        attempts = [attempt for delivery in response.json()["deliveries"] for attempt in delivery["attempt_log"]]
        failed = [attempt["attempted_at"] for attempt in attempts if attempt["status_code"] is None]
        answered = [attempt["attempted_at"] for attempt in attempts if attempt["status_code"] == 204]
        assert len(failed) == 2 and len(answered) == len(jobs)
        # Nothing was sent while it was open: the probe went out a whole window after the failure that opened it.
        assert min(answered) >= max(failed) + QUICK_BREAKER["notify_breaker_open_s"]
        assert circuit == {"state": "closed", "until": None, "consecutive_failures": 0, "last_error": None}
        assert hole.requests - hole.answered == 2  # only the two that opened it hung
    finally:
        await hole.close()


async def test_callback_urls_share_one_breaker_per_host(make_stack: StackFactory, black_hole: BlackHole) -> None:
    """Per-job callback URLs on one host share a circuit: it opens on their failures, in the circuits table."""
    stack = await make_stack(notify_breaker_failures=1, **QUICK_BREAKER)
    body: dict[str, Any] = {"provider": "fal", "model": "fal-ai/stepx-edit2"}
    body["input"] = {"prompt": "red", "image_url": SMALL_PNG_URI}
    for path in ("/a", "/b", "/c"):
        response = await stack.client.post("/v1/jobs", json={**body, "callback_url": f"{black_hole.url}{path}"})
        assert response.status_code == 202, response.text
    host = black_hole.url.removeprefix("http://")
    deadline = time.monotonic() + 30
    while True:
        circuits = await read_rows(stack.services.db.path, "SELECT * FROM circuits")
        if circuits and circuits[0]["circuit_state"] == "open":
            break
        assert time.monotonic() < deadline, "the callback host's circuit never opened"
        await asyncio.sleep(0.05)
    assert circuits[0]["target"] == f"callback:{host}"
    lanes = await read_rows(stack.services.db.path, "SELECT DISTINCT lane FROM tasks WHERE kind = 'deliver'")
    assert [lane["lane"] for lane in lanes] == [f"callback:{host}"]
    assert black_hole.connections <= QUICK_BREAKER["notify_concurrency_per_target"]


async def test_deliveries_held_by_an_open_circuit_die_after_the_retry_span(
    make_stack: StackFactory, black_hole: BlackHole
) -> None:
    """A delivery that waits behind a circuit that stays open is dead, "target unreachable", once it waited
    as long as the whole retry schedule would have taken."""
    settings = {**QUICK_BREAKER, "notify_retry_scale": 0.00002, "notify_breaker_max_open_s": 0.5}
    stack = await make_stack(notify_breaker_failures=1, **settings)  # the schedule's span is now about 2 s
    body: dict[str, Any] = {"provider": "fal", "model": "fal-ai/stepx-edit2", "callback_url": black_hole.url}
    body["input"] = {"prompt": "red", "image_url": SMALL_PNG_URI}
    jobs = [(await stack.client.post("/v1/jobs", json=body)).json()["id"] for _ in range(3)]

    async def callbacks() -> list[dict[str, Any]]:
        rows = [await stack.client.get("/v1/deliveries", params={"job_id": job_id}) for job_id in jobs]
        return [delivery for response in rows for delivery in response.json()["deliveries"]]

    unreachable = "target unreachable: its circuit stayed open"
    deadline = time.monotonic() + 30
    while not (died := [delivery for delivery in await callbacks() if delivery["last_error"] == unreachable]):
        assert time.monotonic() < deadline, "no delivery died of waiting behind the open circuit"
        await asyncio.sleep(0.1)
    dead = died[0]
    assert dead["status"] == "dead"
    assert dead["updated_at"] - dead["created_at"] >= 99305 * 0.00002  # RETRY_SCHEDULE_S's span, scaled


def test_breaker_opens_doubles_and_closes() -> None:
    """Consecutive unanswered attempts open the circuit; each failed probe doubles the window up to the cap;
    an answer closes it."""
    policy = BreakerPolicy(failures=3, open_s=10, max_open_s=25, probe_s=5)
    circuit = Circuit()
    for _ in range(2):
        circuit = circuit.unanswered("timeout", 100.0, policy)
        assert circuit.state is CircuitState.CLOSED and circuit.wait_s(100.0) is None
    circuit = circuit.unanswered("timeout", 100.0, policy)
    assert (circuit.state, circuit.until, circuit.failures) == (CircuitState.OPEN, 110.0, 3)
    assert circuit.wait_s(104.0) == 6.0
    assert circuit.wait_s(110.0) is None
    probe = circuit.probing(110.0, policy)
    assert (probe.state, probe.wait_s(112.0)) == (CircuitState.HALF_OPEN, 3.0)
    reopened = probe.unanswered("refused", 111.0, policy)
    assert (reopened.state, reopened.until, reopened.trips) == (CircuitState.OPEN, 131.0, 2)
    third = reopened.probing(131.0, policy).unanswered("refused", 131.0, policy)
    assert third.until == 131.0 + 25  # capped
    assert third.probing(160.0, policy).answered() == Circuit()


async def test_breaker_state_survives_a_restart_and_parks_the_lane(tmp_path: Path) -> None:
    """An opened circuit is stored on the subscription (shown after reopening the database), and the
    target's waiting deliveries are held until the window ends."""
    policy = BreakerPolicy(failures=1, open_s=60)
    db = Database(tmp_path / "receiver.db")
    await db.open()
    subscriptions = Subscriptions(
        db, clock=lambda: 1000.0, allow_private=True, grace_s=0, on_task=lambda: None, sealer=Sealer(b"key")
    )
    sub_id = (await subscriptions.create({"kind": "webhook", "url": "http://127.0.0.1:9/hook"}))["id"]
    await Outbox(db).enqueue("deliver", None, now=1000.0, lane=sub_id)
    await Outbox(db).enqueue("deliver", None, now=1000.0, lane="another")

    def fail(tx: Transaction) -> Circuit:
        return record_attempt(
            tx, sub_id, subscription=True, answered=False, error="no answer", now=1000.0, policy=policy
        )

    assert (await db.write(fail)).state is CircuitState.OPEN
    await db.close()
    db = Database(tmp_path / "receiver.db")
    await db.open()
    try:
        subscriptions.db = db
        [view] = await subscriptions.list_all()
        assert view["circuit"] == {
            "state": "open",
            "until": 1060.0,
            "consecutive_failures": 1,
            "last_error": "no answer",
        }
        rows = await read_rows(db.path, "SELECT lane, run_at FROM tasks ORDER BY id")
        assert [(row["lane"], row["run_at"]) for row in rows] == [(sub_id, 1060.0), ("another", 1000.0)]
    finally:
        await db.close()
