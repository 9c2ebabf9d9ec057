"""Bulk replay over the real API and a real SQLite file: paged, one statement per page, every match requeued once."""

from __future__ import annotations

import json
import time
from typing import Any

from receiver.notify.subscriptions import REPLAY_PAGE
from receiver.storage import events, tasks
from receiver.storage.base import Transaction
from tests.helpers.database import add_delivery, read_rows, recorded_queries
from tests.helpers.stack import Stack, StackFactory

DEAD = 2 * REPLAY_PAGE + 203  # three pages


async def seed_deliveries(stack: Stack, statuses: dict[str, int]) -> dict[str, list[str]]:
    """`count` callback deliveries in each status, all of one event; returns their ids by status."""
    now = time.time()
    ids: dict[str, list[str]] = {status: [] for status in statuses}

    def write(tx: Transaction) -> None:
        events.insert_event(tx, "evt_seed", event_type="job.failed", job_id=None, payload={}, now=now)
        n = 0
        for status, count in statuses.items():
            for _ in range(count):
                n += 1
                delivery_id = f"dlv_{n:06d}"
                ids[status].append(delivery_id)
                add_delivery(
                    tx, delivery_id, event_id="evt_seed", target=f"callback-{n}", url="https://x.example/h",
                    status=status, attempts=8, now=now,
                )  # fmt: skip

    await stack.services.db.write(write)
    return ids


async def replay(stack: Stack, body: dict[str, Any]) -> int:
    response = await stack.client.post("/v1/deliveries/replay", json=body)
    assert response.status_code == 202, response.text
    requeued: int = response.json()["requeued"]
    return requeued


async def test_replay_runs_one_update_and_one_insert_per_page(make_stack: StackFactory) -> None:
    """Replaying three pages of dead deliveries runs the same three statements per page, not one per row."""
    stack = await make_stack(workers=False)
    await seed_deliveries(stack, {"dead": DEAD})
    with recorded_queries(stack.services.db) as queries:
        assert await replay(stack, {"status": "dead"}) == DEAD
    # Each page: the requeue (one UPDATE ... RETURNING), its deliver tasks (one INSERT), and the hurry of any
    # task already waiting (one UPDATE); never a statement per delivery.
    assert queries == ["requeue_deliveries_page", "insert_deliver_tasks", "hurry_deliver_tasks"] * 3


async def test_replay_over_several_pages_requeues_each_match_once(make_stack: StackFactory) -> None:
    """Every matching delivery that is not pending is requeued with exactly one deliver task, across pages;
    pending ones and ones outside the filter are left alone."""
    stack = await make_stack(workers=False)
    ids = await seed_deliveries(stack, {"dead": DEAD, "delivered": 40, "failed": 30, "pending": 25})
    assert await replay(stack, {"status": "dead"}) == DEAD
    tasks = await read_rows(stack.services.db.path, "SELECT payload FROM tasks WHERE kind = 'deliver'")
    queued = [json.loads(row["payload"])["delivery_id"] for row in tasks]
    assert sorted(queued) == ids["dead"]
    rows = await read_rows(stack.services.db.path, "SELECT id, status FROM deliveries")
    status_of = {row["id"]: row["status"] for row in rows}
    assert {status_of[i] for i in ids["dead"]} == {"pending"}
    assert {status_of[i] for i in ids["delivered"]} == {"delivered"}
    assert {status_of[i] for i in ids["failed"]} == {"failed"}
    # Without a status filter everything not pending matches; what was just requeued is pending now.
    assert await replay(stack, {"since": 0}) == 40 + 30
    tasks = await read_rows(stack.services.db.path, "SELECT payload FROM tasks WHERE kind = 'deliver'")
    assert len(tasks) == DEAD + 40 + 30
    assert len({json.loads(row["payload"])["delivery_id"] for row in tasks}) == DEAD + 40 + 30


async def test_replaying_a_failed_delivery_keeps_one_live_task_and_runs_it_now(make_stack: StackFactory) -> None:
    """A failed delivery already has its retry task waiting: a replay or retry moves that task to now
    instead of queueing a second one, so the event is never sent twice."""
    stack = await make_stack(workers=False)
    ids = await seed_deliveries(stack, {"failed": 3})
    later = time.time() + 3600

    def waiting_retries(tx: Transaction) -> None:
        for delivery_id in ids["failed"]:
            tasks.insert(
                tx, "deliver", None, later, payload={"delivery_id": delivery_id}, lane="callback:x.example:443"
            )

    await stack.services.db.write(waiting_retries)
    retried = await stack.client.post(f"/v1/deliveries/{ids['failed'][0]}/retry")
    assert retried.status_code < 300, retried.text
    assert await replay(stack, {"status": "failed"}) == 2  # the other two
    rows = await read_rows(
        stack.services.db.path,
        "SELECT json_extract(payload, '$.delivery_id') AS delivery_id, run_at FROM tasks"
        " WHERE kind = 'deliver' AND status IN ('pending', 'leased') ORDER BY delivery_id",
    )
    assert [row["delivery_id"] for row in rows] == ids["failed"]  # one live task each
    assert all(row["run_at"] < later for row in rows)  # and due now, not in an hour
