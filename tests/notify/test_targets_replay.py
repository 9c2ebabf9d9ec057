"""Bulk replay over the real API and a real SQLite file: paged, one statement per page, every match requeued once."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from receiver.notify.subscriptions import REPLAY_PAGE
from tests.helpers.stack import Stack, StackFactory

DEAD = 2 * REPLAY_PAGE + 203  # three pages


async def seed_deliveries(stack: Stack, statuses: dict[str, int]) -> dict[str, list[str]]:
    """`count` callback deliveries in each status, all of one event; returns their ids by status."""
    now = time.time()
    ids: dict[str, list[str]] = {status: [] for status in statuses}

    def write(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO events (id, type, job_id, payload, created_at)"
            " VALUES ('evt_seed', 'job.failed', NULL, '{}', ?)",
            (now,),
        )
        n = 0
        for status, count in statuses.items():
            for _ in range(count):
                n += 1
                delivery_id = f"dlv_{n:06d}"
                ids[status].append(delivery_id)
                conn.execute(
                    "INSERT INTO deliveries (id, event_id, subscription_id, target, url, webhook_id, status,"
                    " attempts, created_at, updated_at) VALUES (?, 'evt_seed', NULL, ?, 'https://x.example/h',"
                    " ?, ?, 8, ?, ?)",
                    (delivery_id, f"callback-{n}", f"msg_{n}", status, now, now),
                )

    await stack.services.db.writer.run(write)
    return ids


async def replay(stack: Stack, body: dict[str, Any]) -> int:
    response = await stack.client.post("/v1/deliveries/replay", json=body)
    assert response.status_code == 202, response.text
    requeued: int = response.json()["requeued"]
    return requeued


async def test_replay_runs_one_update_and_one_insert_per_page(make_stack: StackFactory) -> None:
    """Replaying three pages of dead deliveries runs three UPDATEs and three INSERTs, not one per row."""
    stack = await make_stack(workers=False)
    await seed_deliveries(stack, {"dead": DEAD})
    statements: list[str] = []
    writer = stack.services.db.writer
    await writer.run(lambda conn: conn.set_trace_callback(statements.append))
    try:
        assert await replay(stack, {"status": "dead"}) == DEAD
    finally:
        await writer.run(lambda conn: conn.set_trace_callback(None))
    writes = [" ".join(line for line in s.upper().splitlines() if not line.startswith("--")) for s in statements]
    updates = [s for s in writes if s.startswith("UPDATE DELIVERIES")]
    inserts = [s for s in writes if s.startswith("INSERT INTO TASKS")]
    assert (len(updates), len(inserts)) == (3, 3)
    assert not any("FROM DELIVERIES WHERE ID = " in s.upper() for s in statements)


async def test_replay_over_several_pages_requeues_each_match_once(make_stack: StackFactory) -> None:
    """Every matching delivery that is not pending is requeued with exactly one deliver task, across pages;
    pending ones and ones outside the filter are left alone."""
    stack = await make_stack(workers=False)
    ids = await seed_deliveries(stack, {"dead": DEAD, "delivered": 40, "failed": 30, "pending": 25})
    assert await replay(stack, {"status": "dead"}) == DEAD
    tasks = await stack.services.db.fetch_all("SELECT payload FROM tasks WHERE kind = 'deliver'")
    queued = [json.loads(row["payload"])["delivery_id"] for row in tasks]
    assert sorted(queued) == ids["dead"]
    rows = await stack.services.db.fetch_all("SELECT id, status FROM deliveries")
    status_of = {row["id"]: row["status"] for row in rows}
    assert {status_of[i] for i in ids["dead"]} == {"pending"}
    assert {status_of[i] for i in ids["delivered"]} == {"delivered"}
    assert {status_of[i] for i in ids["failed"]} == {"failed"}
    # Without a status filter everything not pending matches; what was just requeued is pending now.
    assert await replay(stack, {"since": 0}) == 40 + 30
    tasks = await stack.services.db.fetch_all("SELECT payload FROM tasks WHERE kind = 'deliver'")
    assert len(tasks) == DEAD + 40 + 30
    assert len({json.loads(row["payload"])["delivery_id"] for row in tasks}) == DEAD + 40 + 30


async def test_replaying_a_failed_delivery_keeps_one_live_task_and_runs_it_now(make_stack: StackFactory) -> None:
    """A failed delivery already has its retry task waiting: a replay or retry moves that task to now
    instead of queueing a second one, so the event is never sent twice."""
    stack = await make_stack(workers=False)
    ids = await seed_deliveries(stack, {"failed": 3})
    later = time.time() + 3600

    def waiting_retries(conn: sqlite3.Connection) -> None:
        for delivery_id in ids["failed"]:
            conn.execute(
                "INSERT INTO tasks (kind, payload, run_at, lane, created_at, updated_at)"
                " VALUES ('deliver', ?, ?, 'callback:x.example:443', ?, ?)",
                (json.dumps({"delivery_id": delivery_id}), later, later, later),
            )

    await stack.services.db.writer.run(waiting_retries)
    retried = await stack.client.post(f"/v1/deliveries/{ids['failed'][0]}/retry")
    assert retried.status_code < 300, retried.text
    assert await replay(stack, {"status": "failed"}) == 2  # the other two
    rows = await stack.services.db.fetch_all(
        "SELECT json_extract(payload, '$.delivery_id') AS delivery_id, run_at FROM tasks"
        " WHERE kind = 'deliver' AND status IN ('pending', 'leased') ORDER BY delivery_id"
    )
    assert [row["delivery_id"] for row in rows] == ids["failed"]  # one live task each
    assert all(row["run_at"] < later for row in rows)  # and due now, not in an hour
