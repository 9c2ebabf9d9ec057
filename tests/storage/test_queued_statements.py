"""The storage contract of `Transaction.execute_later` (a statement whose outcome the body does not read) and
`execute_at_commit` (one run as late as the backend can, the events' inserts).

PostgreSQL sends it without waiting and reads its outcome with a later statement's round trip, maybe another
body's or the COMMIT's; SQLite runs it at once. Either way its failure fails its own body and no other, in a
group commit too. Each database here has one writer, and a first body holds it until the bodies under test are
queued, so they share the next commit (checked: two commits in all).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from receiver.errors import NotFoundError
from receiver.storage import events, jobs, tasks
from receiver.storage.base import Database, IntegrityViolation, Transaction, UniqueViolation
from receiver.storage.postgres import Database as PostgresDatabase
from receiver.storage.sqlite import Database as SqliteDatabase
from tests.helpers.storage_rows import T0, insert_job

GATE_TIMEOUT_S = 60.0  # only a guard against a hung test: the gate is opened as soon as the bodies are queued


@pytest.fixture(params=["sqlite", "postgres"])
async def one_writer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An open, migrated database of each backend whose writes all go through one writer."""
    if request.param == "sqlite":
        db: Database = SqliteDatabase(tmp_path / "receiver.db")
    else:
        db = PostgresDatabase(request.getfixturevalue("postgres_url"), pool_size=2)  # one writer, one reader
    await db.open()
    try:
        yield db
    finally:
        await db.close()


async def in_one_commit(db: Database, bodies: list[Callable[[Transaction], Any]]) -> list[Any]:
    """Run `bodies` as concurrent writes that share one group commit; their results or exceptions."""
    started, gate = threading.Event(), threading.Event()

    def hold(tx: Transaction) -> bool:
        started.set()
        return gate.wait(GATE_TIMEOUT_S)

    commits = db.commits
    holder = asyncio.ensure_future(db.write(hold))
    assert await asyncio.to_thread(started.wait, GATE_TIMEOUT_S)  # the writer runs the holder, alone
    writes: list[Awaitable[Any]] = [asyncio.ensure_future(db.write(body)) for body in bodies]
    await asyncio.sleep(0)  # each write queued its body (`write` awaits nothing before)
    gate.set()
    assert await holder is True
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert db.commits - commits == 2  # the holder's, then one for all of `bodies`
    return results


def new_job_then_queued(job_id: str, task_job_id: str) -> Callable[[Transaction], str]:
    """A body inserting a job (a statement whose outcome is read) then queueing a task for `task_job_id`."""

    def write(tx: Transaction) -> str:
        insert_job(tx, job_id)
        tasks.insert(tx, "poll", task_job_id, T0)
        return job_id

    return write


def queued_only(job_id: str, task_job_id: str) -> Callable[[Transaction], str]:
    """A body that only queues: a status update of `job_id`, then a task for `task_job_id`."""

    def write(tx: Transaction) -> str:
        jobs.bind_request_id(tx, job_id, f"req_{job_id}", now=T0)
        tasks.insert(tx, "poll", task_job_id, T0)
        return job_id

    return write


async def polled_jobs(db: Database) -> list[str]:
    """The jobs of the queued poll tasks (claimed, so read once), sorted."""
    claimed = await db.write(
        lambda tx: tasks.claim(tx, owner="o", kinds=["poll"], limit=10, lease_expires_at=T0 + 60, now=T0)
    )
    return sorted(task.job_id or "" for task in claimed)


def paused(
    make: Callable[[str, str], Callable[[Transaction], str]],
) -> Callable[[str, str], Callable[[Transaction], str]]:
    """`make`'s body, starting after a pause: the previous body's queued statements have been answered by
    then, so psycopg reads a failure of theirs while it sends this body's first statement, not at a sync (the
    pause only steers which path the failure takes; the outcome expected is the same)."""

    def body(job_id: str, task_job_id: str) -> Callable[[Transaction], str]:
        inner = make(job_id, task_job_id)

        def write(tx: Transaction) -> str:
            time.sleep(PAUSE_S)
            return inner(tx)

        return write

    return body


PAUSE_S = 0.05
SHAPES = {
    "job-then-queued": new_job_then_queued,
    "queued-only": queued_only,
    "job-then-queued-paused": paused(new_job_then_queued),
    "queued-only-paused": paused(queued_only),
}


@pytest.mark.parametrize("bad_at", [0, 1, 3], ids=["bad-first", "bad-second", "bad-last"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_a_failing_queued_statement_fails_its_own_body_only(
    one_writer: Database, shape: str, bad_at: int
) -> None:
    """In a group commit of four bodies, the one whose queued task insert names a missing job (a broken foreign
    key, found after the body returned) fails with `IntegrityViolation` and leaves nothing behind; the other
    three return their results and their work (the job or its request id, the queued task) is stored."""
    db = one_writer
    make = SHAPES[shape]
    ids = [f"job_{n}" for n in range(4)]
    if shape.startswith("queued-only"):
        for job_id in ids:
            await db.write(lambda tx, job_id=job_id: insert_job(tx, job_id))
    bodies = [make(job_id, "job_missing" if n == bad_at else job_id) for n, job_id in enumerate(ids)]

    results = await in_one_commit(db, bodies)

    for n, (job_id, result) in enumerate(zip(ids, results, strict=True)):
        if n == bad_at:
            assert isinstance(result, IntegrityViolation), result
            assert result.__cause__ is not None  # the driver's error, kept for the logs
        else:
            assert result == job_id
    assert await polled_jobs(db) == sorted(ids[:bad_at] + ids[bad_at + 1 :])
    bad = ids[bad_at]
    if shape.startswith("queued-only"):
        bound = {job_id: (await jobs.read(db, job_id)).provider_request_id for job_id in ids}
        assert bound == {job_id: None if job_id == bad else f"req_{job_id}" for job_id in ids}
    else:
        with pytest.raises(NotFoundError):
            await jobs.read(db, bad)


async def test_a_queued_failure_reaches_the_body_at_its_next_statement(one_writer: Database) -> None:
    """A body that queues a broken statement gets its error by the time its next statement (one whose outcome
    it reads) returns, whatever the backend; the body fails with it, and the bodies beside it commit."""
    db = one_writer
    seen: list[str] = []

    def bad(tx: Transaction) -> None:
        insert_job(tx, "job_bad")
        try:
            tasks.insert(tx, "poll", "job_missing", T0)
            jobs.get(tx, "job_bad")
        except IntegrityViolation:
            seen.append("raised in the body")
            raise

    results = await in_one_commit(
        db, [new_job_then_queued("job_a", "job_a"), bad, new_job_then_queued("job_c", "job_c")]
    )

    assert results[0] == "job_a" and results[2] == "job_c"
    assert isinstance(results[1], IntegrityViolation)
    assert seen == ["raised in the body"]
    with pytest.raises(NotFoundError):
        await jobs.read(db, "job_bad")
    assert await polled_jobs(db) == ["job_a", "job_c"]


async def test_a_lone_body_failing_at_commit_leaves_the_writer_working(one_writer: Database) -> None:
    """A write alone in its commit whose queued statement fails gets the error; the next write commits."""
    db = one_writer
    with pytest.raises(IntegrityViolation):
        await db.write(new_job_then_queued("job_bad", "job_missing"))
    with pytest.raises(NotFoundError):
        await jobs.read(db, "job_bad")
    assert await db.write(new_job_then_queued("job_ok", "job_ok")) == "job_ok"
    assert await polled_jobs(db) == ["job_ok"]


# --- statements run at the commit (`execute_at_commit`): the events' inserts ----------------------------


def emit(event_id: str) -> Callable[[Transaction], str]:
    """A body inserting event `event_id` and a delivery of it (inserted first on PostgreSQL: the event waits
    for the commit)."""

    def write(tx: Transaction) -> str:
        events.insert_event(tx, event_id, event_type="job.succeeded", job_id=None, payload={"id": event_id}, now=T0)
        events.insert_delivery(
            tx, f"dlv_{event_id}", event_id=event_id, subscription_id=None, target="callback",
            url="https://cb.example/hook", webhook_id=f"msg_{event_id}", now=T0,
        )  # fmt: skip
        return event_id

    return write


@pytest.mark.parametrize("bad_at", [0, 1, 2], ids=["bad-first", "bad-second", "bad-last"])
async def test_an_event_insert_that_fails_at_the_commit_fails_its_own_body_only(
    one_writer: Database, bad_at: int
) -> None:
    """In a group commit of three bodies, the one whose event id is taken already fails with `UniqueViolation`
    (its delivery is not stored); the other two commit their events, in the bodies' order, and deliveries."""
    db = one_writer
    await db.write(emit("evt_taken"))
    ids = ["evt_taken" if n == bad_at else f"evt_{n}" for n in range(3)]

    results = await in_one_commit(db, [emit(event_id) for event_id in ids])

    for n, (event_id, result) in enumerate(zip(ids, results, strict=True)):
        if n == bad_at:
            assert isinstance(result, UniqueViolation), result
        else:
            assert result == event_id
    good = [event_id for event_id in ids if event_id != "evt_taken"]
    assert [row["id"] for row in await events.events_after(db, 0, limit=10)] == ["evt_taken", *good]
    deliveries = await events.list_deliveries(db, limit=10)
    assert sorted(row["event_id"] for row in deliveries) == sorted(["evt_taken", *good])


async def test_a_batch_holds_the_events_ordering_lock_for_its_commit_only(postgres_url: str) -> None:
    """PostgreSQL, two writers: while one writer's batch that inserted an event still runs (its body waits),
    the other's event commits (the ordering lock is taken at the commit, not at the insert), with the smaller
    seq; the waiting batch then commits its event after it. (Were the lock taken at the insert, the second
    commit would wait for the first body's gate: `hold` would come back False.)"""
    db = PostgresDatabase(postgres_url, pool_size=4)  # two writers, two readers
    await db.open()
    try:
        started, gate = threading.Event(), threading.Event()

        def hold(tx: Transaction) -> bool:
            emit("evt_first_inserted")(tx)
            started.set()
            return gate.wait(GATE_TIMEOUT_S)

        holder = asyncio.ensure_future(db.write(hold))
        assert await asyncio.to_thread(started.wait, GATE_TIMEOUT_S)
        assert await db.write(emit("evt_first_committed")) == "evt_first_committed"
        gate.set()
        assert await holder is True
        rows = await events.events_after(db, 0, limit=10)
        assert [row["id"] for row in rows] == ["evt_first_committed", "evt_first_inserted"]
    finally:
        await db.close()
