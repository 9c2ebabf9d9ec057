"""Storage contract, events and deliveries: idempotent emission, delivery bookkeeping, retry and bulk replay pages.

Every test runs against each backend (`database`), through the stores and the `Database` API only.
"""

from __future__ import annotations

from typing import Any

import pytest

from receiver.models import Task
from receiver.storage import events, tasks
from receiver.storage.base import Database, Row, Transaction, UniqueViolation
from tests.helpers.storage_rows import insert_job, insert_subscription

NOW = 1_000.0


async def claim(db: Database, kind: str | None = None) -> list[Task]:
    """Lease every due task of `kind` (of every kind when None)."""
    kinds = () if kind is None else (kind,)
    return await db.write(
        lambda tx: tasks.claim(
            tx, owner="w1", kinds=kinds, exclude=kind is None, limit=100, lease_expires_at=NOW + 60, now=NOW
        )
    )


def add_event(tx: Transaction, event_id: str, job_id: str | None = None, *, now: float = NOW) -> None:
    events.insert_event(tx, event_id, event_type="job.succeeded", job_id=job_id, payload={"n": 1}, now=now)


def add_delivery(
    tx: Transaction, delivery_id: str, event_id: str, *, sub_id: str | None = None, now: float = NOW
) -> None:
    target = "subscription" if sub_id else f"callback-{delivery_id}"
    url = None if sub_id else "https://cb.example/hook"
    events.insert_delivery(
        tx, delivery_id, event_id=event_id, subscription_id=sub_id, target=target, url=url,
        webhook_id=f"msg_{delivery_id}", now=now,
    )  # fmt: skip


def finish(tx: Transaction, delivery_id: str, status: str, *, now: float = NOW) -> None:
    events.update_delivery(
        tx, delivery_id, status=status, attempted=1, last_error=None if status == "delivered" else "boom",
        next_attempt_at=None, delivered_at=now if status == "delivered" else None, now=now,
    )  # fmt: skip


async def delivery(db: Database, delivery_id: str) -> Row:
    row = await events.read_delivery(db, delivery_id)
    assert row is not None
    return row


# --- events ---------------------------------------------------------------------------------------------


async def test_an_event_is_stored_once_and_read_back_in_seq_order(database: Database) -> None:
    """Events get increasing seqs; `events_after` pages them and `last_event_seq` is the newest."""
    assert await events.last_event_seq(database) == 0

    def write(tx: Transaction) -> None:
        for n in range(3):
            add_event(tx, f"evt_{n}")

    await database.write(write)
    rows = await events.events_after(database, 0, limit=2)
    assert [row["id"] for row in rows] == ["evt_0", "evt_1"]
    assert rows[0]["seq"] < rows[1]["seq"]
    assert rows[0]["payload"] == '{"n":1}' and rows[0]["type"] == "job.succeeded"
    rest = await events.events_after(database, rows[1]["seq"], limit=2)
    assert [row["id"] for row in rest] == ["evt_2"]
    assert await events.last_event_seq(database) == rest[0]["seq"]
    event = await events.read_event(database, "evt_1")
    assert event is not None and event["seq"] == rows[1]["seq"]
    assert await events.read_event(database, "evt_9") is None


async def test_the_same_event_emitted_twice_is_one_event(database: Database) -> None:
    """A second event with the same id is a UniqueViolation and rolls back its whole write: one event,
    one delivery, one deliver task."""

    def emit(tx: Transaction) -> None:
        add_event(tx, "evt_1")
        add_delivery(tx, "dlv_1", "evt_1")
        tasks.insert(tx, "deliver", None, NOW, payload={"delivery_id": "dlv_1"}, lane="callback:cb.example:443")

    await database.write(emit)
    with pytest.raises(UniqueViolation):
        await database.write(emit)
    assert [row["id"] for row in await events.events_after(database, 0, limit=10)] == ["evt_1"]
    assert len(await events.list_deliveries(database, limit=10)) == 1
    assert [(task.kind, task.payload) for task in await claim(database)] == [("deliver", {"delivery_id": "dlv_1"})]


async def test_an_event_is_emitted_once_by_the_task_that_completes(database: Database) -> None:
    """Emission gated on completing the leased task in the same write happens once, however often it runs."""

    def setup(tx: Transaction) -> None:
        insert_job(tx, "job_1", now=NOW)
        tasks.insert(tx, "notify", "job_1", NOW)

    await database.write(setup)
    [task] = await claim(database, "notify")

    def emit(tx: Transaction) -> bool:
        if not tasks.complete(tx, task.id, owner="w1", attempts=task.attempts, now=NOW):
            return False
        add_event(tx, "evt_once", "job_1")
        return True

    assert await database.write(emit) is True
    assert await database.write(emit) is False
    assert [row["id"] for row in await events.events_after(database, 0, limit=10)] == ["evt_once"]


# --- deliveries -----------------------------------------------------------------------------------------


async def test_a_delivery_goes_pending_failed_dead_with_every_attempt_logged(database: Database) -> None:
    """Insert (pending), a failed attempt (failed, next try set), a last one (dead); the log has both."""

    def setup(tx: Transaction) -> None:
        add_event(tx, "evt_1")
        add_delivery(tx, "dlv_1", "evt_1")
        add_delivery(tx, "dlv_1b", "evt_1")  # another callback target of the same event

    await database.write(setup)
    row = await delivery(database, "dlv_1")
    assert (row["status"], row["attempts"], row["webhook_id"], row["url"]) == (
        "pending", 0, "msg_dlv_1", "https://cb.example/hook"
    )  # fmt: skip

    async def attempt(status: str, at: float, next_at: float | None) -> None:
        def write(tx: Transaction) -> None:
            events.insert_attempt(tx, delivery_id="dlv_1", now=at, status_code=500, latency_ms=1.5, error="HTTP 500")
            events.update_delivery(
                tx, "dlv_1", status=status, attempted=1, last_error="HTTP 500", next_attempt_at=next_at,
                delivered_at=None, now=at,
            )  # fmt: skip

        await database.write(write)

    await attempt("failed", NOW + 1, NOW + 60)
    row = await delivery(database, "dlv_1")
    assert (row["status"], row["attempts"], row["next_attempt_at"], row["last_error"]) == (
        "failed", 1, NOW + 60, "HTTP 500"
    )  # fmt: skip
    await attempt("dead", NOW + 61, None)
    row = await delivery(database, "dlv_1")
    assert (row["status"], row["attempts"], row["updated_at"]) == ("dead", 2, NOW + 61)
    log = await events.list_attempts(database, "dlv_1")
    assert [(a["attempted_at"], a["status_code"], a["latency_ms"], a["error"]) for a in log] == [
        (NOW + 1, 500, 1.5, "HTTP 500"),
        (NOW + 61, 500, 1.5, "HTTP 500"),
    ]
    assert await events.list_attempts(database, "dlv_1b") == []
    assert (await delivery(database, "dlv_1b"))["status"] == "pending"


async def test_a_delivered_delivery_keeps_its_time_and_knows_its_subscription(database: Database) -> None:
    """`delivered_at` is set once (a later update without one keeps it); the subscription id is readable
    in a write, None for a callback."""

    def setup(tx: Transaction) -> None:
        insert_subscription(tx, "sub_1", now=NOW)
        add_event(tx, "evt_1")
        add_delivery(tx, "dlv_sub", "evt_1", sub_id="sub_1")
        add_delivery(tx, "dlv_cb", "evt_1")
        finish(tx, "dlv_sub", "delivered", now=NOW + 5)

    await database.write(setup)
    await database.write(lambda tx: finish(tx, "dlv_sub", "dead", now=NOW + 9))
    row = await delivery(database, "dlv_sub")
    assert (row["status"], row["delivered_at"], row["attempts"]) == ("dead", NOW + 5, 2)
    found = await database.write(
        lambda tx: [events.delivery_subscription_id(tx, d) for d in ("dlv_sub", "dlv_cb", "dlv_none")]
    )
    assert found == ["sub_1", None, None]
    assert await events.delivery_exists(database, "dlv_cb") is True
    assert await events.delivery_exists(database, "dlv_none") is False
    assert (await database.write(lambda tx: events.get_delivery(tx, "dlv_cb")) or {})["target"] == "callback-dlv_cb"


async def test_a_second_delivery_to_the_same_target_is_a_no_op(database: Database) -> None:
    """One delivery per event and target: inserting it again changes nothing."""

    def write(tx: Transaction) -> None:
        insert_subscription(tx, "sub_1", now=NOW)
        add_event(tx, "evt_1")
        add_delivery(tx, "dlv_1", "evt_1", sub_id="sub_1")
        add_delivery(tx, "dlv_2", "evt_1", sub_id="sub_1")

    await database.write(write)
    assert [row["id"] for row in await events.list_deliveries(database, limit=10)] == ["dlv_1"]


async def test_list_deliveries_filters_and_pages_newest_first(database: Database) -> None:
    """Filters by job, subscription, status and time; pages by id below the cursor."""

    def write(tx: Transaction) -> None:
        insert_job(tx, "job_a", now=NOW)
        insert_subscription(tx, "sub_1", now=NOW)
        add_event(tx, "evt_a", "job_a")
        add_event(tx, "evt_b")
        add_delivery(tx, "dlv_1", "evt_a", sub_id="sub_1", now=NOW)
        add_delivery(tx, "dlv_2", "evt_a", now=NOW + 10)
        add_delivery(tx, "dlv_3", "evt_b", now=NOW + 20)
        finish(tx, "dlv_3", "dead")

    await database.write(write)

    async def ids(**filters: Any) -> list[str]:
        return [row["id"] for row in await events.list_deliveries(database, limit=10, **filters)]

    assert await ids() == ["dlv_3", "dlv_2", "dlv_1"]
    assert await ids(job_id="job_a") == ["dlv_2", "dlv_1"]
    assert await ids(subscription_id="sub_1") == ["dlv_1"]
    assert await ids(status="dead") == ["dlv_3"]
    assert await ids(since=NOW + 10) == ["dlv_3", "dlv_2"]
    assert await ids(until=NOW + 10) == ["dlv_1"]
    assert await ids(cursor="dlv_3") == ["dlv_2", "dlv_1"]
    assert [row["id"] for row in await events.list_deliveries(database, limit=1)] == ["dlv_3"]


async def test_retry_requeues_only_a_finished_delivery_and_hurries_its_waiting_task(database: Database) -> None:
    """A failed, dead or delivered delivery becomes pending again (a pending one does not), and a
    waiting deliver task of it becomes due now."""

    def setup(tx: Transaction) -> None:
        add_event(tx, "evt_1")
        for delivery_id, status in (("dlv_f", "failed"), ("dlv_d", "dead"), ("dlv_ok", "delivered")):
            add_delivery(tx, delivery_id, "evt_1")
            finish(tx, delivery_id, status)
        add_delivery(tx, "dlv_p", "evt_1")
        tasks.insert(tx, "deliver", None, NOW, payload={"delivery_id": "dlv_f"}, lane="l", delay_s=3600)

    await database.write(setup)
    assert await tasks.next_run_at(database) == NOW + 3600
    requeued = await database.write(
        lambda tx: [events.requeue_delivery(tx, d, now=NOW + 1) for d in ("dlv_f", "dlv_d", "dlv_ok", "dlv_p")]
    )
    assert requeued == [True, True, True, False]
    for delivery_id in ("dlv_f", "dlv_d", "dlv_ok", "dlv_p"):
        row = await delivery(database, delivery_id)
        assert row["status"] == "pending"
    assert (await delivery(database, "dlv_f"))["next_attempt_at"] == NOW + 1
    await database.write(lambda tx: tasks.hurry_deliver(tx, ["dlv_f"], now=NOW + 2))
    assert await tasks.next_run_at(database) == NOW + 2


async def test_bulk_replay_requeues_page_by_page_in_id_order(database: Database) -> None:
    """Each page takes the next `limit` finished matches above `after`; pending ones and non-matches stay."""

    def setup(tx: Transaction) -> None:
        insert_subscription(tx, "sub_1", now=NOW)
        add_event(tx, "evt_1")
        for n in range(5):
            add_delivery(tx, f"dlv_{n}", "evt_1")
            finish(tx, f"dlv_{n}", "dead")
        add_delivery(tx, "dlv_5", "evt_1")  # pending
        add_delivery(tx, "dlv_6", "evt_1", sub_id="sub_1")
        finish(tx, "dlv_6", "failed")

    await database.write(setup)

    async def page(after: str) -> list[Row]:
        return await database.write(
            lambda tx: events.requeue_deliveries_page(tx, after=after, limit=2, now=NOW + 1, status="dead")
        )

    first = await page("")
    assert [(row["id"], row["subscription_id"], row["url"]) for row in first] == [
        ("dlv_0", None, "https://cb.example/hook"),
        ("dlv_1", None, "https://cb.example/hook"),
    ]
    assert [row["id"] for row in await page("dlv_1")] == ["dlv_2", "dlv_3"]
    assert [row["id"] for row in await page("dlv_3")] == ["dlv_4"]
    assert await page("dlv_4") == []
    assert {row["id"] for row in await events.list_deliveries(database, status="pending", limit=10)} == {
        f"dlv_{n}" for n in range(6)
    }
    by_sub = await database.write(
        lambda tx: events.requeue_deliveries_page(tx, after="", limit=10, now=NOW + 2, subscription_id="sub_1")
    )
    assert [row["id"] for row in by_sub] == ["dlv_6"]
