"""The PostgreSQL dialect under concurrent transactions, in orders a test drives: each case holds one transaction
open on a connection of its own, starts a second one that must wait for it (seen waiting on a lock in
`pg_stat_activity`), commits the first, and checks what the second did then. These are the orders where
READ COMMITTED differs from SQLite's single writer (`receiver/storage/sql/postgres/*.sql`, their headers).

The stores run on `PostgresTransaction`s over the test's own connections (not a `Database`: its writer
threads would decide when each transaction commits)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.rows import dict_row

from receiver.models import JobStatus
from receiver.storage import events, jobs, tasks
from receiver.storage.base import Transaction
from receiver.storage.postgres import PostgresTransaction
from tests.helpers.postgres import pg_rows
from tests.helpers.storage_rows import T0, insert_job
from tests.helpers.waiting import until

T = TypeVar("T")
Session = tuple[psycopg.Connection[dict[str, Any]], Transaction]


@pytest.fixture
def sessions(postgres_url: str) -> Iterator[Callable[[], Session]]:
    """Opens connections to the test's database (each in a transaction until it commits); closes them after."""
    opened: list[psycopg.Connection[dict[str, Any]]] = []

    def open_session() -> Session:
        conn = psycopg.connect(postgres_url, row_factory=dict_row)
        opened.append(conn)
        return conn, PostgresTransaction(conn.cursor())

    yield open_session
    for conn in opened:
        conn.close()


def write(url: str, fn: Callable[[Transaction], T]) -> T:
    """`fn` in a transaction of its own, committed."""
    with closing(psycopg.connect(url, row_factory=dict_row)) as conn:
        result = fn(PostgresTransaction(conn.cursor()))
        conn.commit()
        return result


async def waiting_on_a_lock(url: str, conn: psycopg.Connection[Any]) -> None:
    """Return once `conn`'s backend waits for a lock another transaction holds."""
    pid = conn.info.backend_pid

    def waits() -> bool:
        rows = pg_rows(url, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %(pid)s", {"pid": pid})
        return bool(rows) and rows[0]["wait_event_type"] == "Lock"

    await until(lambda: asyncio.to_thread(waits), what="the second transaction waits for the first")


def leased_lanes(url: str) -> dict[str, int]:
    rows = pg_rows(url, "SELECT lane, COUNT(*) AS n FROM tasks WHERE status = 'leased' GROUP BY lane")
    return {row["lane"]: row["n"] for row in rows}


async def test_event_seqs_are_taken_in_commit_order(postgres_url: str, sessions: Callable[[], Session]) -> None:
    """A second event insert waits until the first one's transaction commits, then takes a larger seq: a reader
    of `seq > after` never sees a seq before a smaller one that commits later."""
    write(postgres_url, lambda tx: insert_job(tx, "job_1"))
    (first, first_tx), (second, second_tx) = sessions(), sessions()
    events.insert_event(first_tx, "evt_1", event_type="job.succeeded", job_id="job_1", payload={}, now=T0)

    def insert_second() -> None:
        events.insert_event(second_tx, "evt_2", event_type="job.failed", job_id=None, payload={}, now=T0)
        second.commit()

    inserted = asyncio.create_task(asyncio.to_thread(insert_second))
    await waiting_on_a_lock(postgres_url, second)
    first.commit()
    await inserted
    rows = pg_rows(postgres_url, "SELECT id FROM events ORDER BY seq")
    assert [row["id"] for row in rows] == ["evt_1", "evt_2"]


async def test_a_lane_claim_counts_what_was_leased_while_it_waited(
    postgres_url: str, sessions: Callable[[], Session]
) -> None:
    """A lane claim that waited for another claim of its pool counts what that one leased and committed
    meanwhile, even a task queued after the waiting claim began (its statement's snapshot has neither): the
    lane never holds more than its cap."""

    def seed(tx: Transaction) -> None:
        tasks.insert(tx, "deliver", None, T0, lane="lane_b", payload={"delivery_id": "dlv_b"})
        tasks.insert(tx, "deliver", None, T0, lane="lane_a", payload={"delivery_id": "dlv_old"})

    write(postgres_url, seed)
    (first, first_tx), (second, second_tx) = sessions(), sessions()

    def claim(tx: Transaction, owner: str, limit: int) -> list[str]:
        claimed = tasks.claim(
            tx, owner=owner, kinds=["deliver"], limit=limit, lease_expires_at=T0 + 60, now=T0, per_lane=1
        )
        return [task.payload["delivery_id"] for task in claimed]

    assert claim(first_tx, "first", 1) == ["dlv_b"]  # the first claim now holds the pool's lock

    def claim_second() -> list[str]:
        claimed = claim(second_tx, "second", 10)
        second.commit()
        return claimed

    waiting = asyncio.create_task(asyncio.to_thread(claim_second))
    await waiting_on_a_lock(postgres_url, second)
    # Due before the old task of lane_a, committed after the waiting claim took its snapshot.
    write(
        postgres_url,
        lambda tx: tasks.insert(tx, "deliver", None, T0 - 5, lane="lane_a", payload={"delivery_id": "dlv_new"}),
    )
    assert claim(first_tx, "first", 10) == ["dlv_new"]
    first.commit()
    assert await waiting == []
    assert leased_lanes(postgres_url) == {"lane_a": 1, "lane_b": 1}


async def test_a_dispatch_claim_counts_the_slot_taken_while_it_waited(
    postgres_url: str, sessions: Callable[[], Session]
) -> None:
    """A provider dispatch claim that waited for another one of the same provider counts the slot that one
    took and committed meanwhile: the provider's concurrency holds."""
    write(postgres_url, lambda tx: [insert_job(tx, job_id) for job_id in ("job_1", "job_2")])
    (first, first_tx), (second, second_tx) = sessions(), sessions()

    def take(tx: Transaction, job_id: str) -> bool:
        return jobs.claim_dispatch(tx, job_id, provider="fal", concurrency=1, rate_per_min=0, synchronous=False, now=T0)

    assert take(first_tx, "job_1")

    def take_second() -> bool:
        taken = take(second_tx, "job_2")
        second.commit()
        return taken

    waiting = asyncio.create_task(asyncio.to_thread(take_second))
    await waiting_on_a_lock(postgres_url, second)
    first.commit()
    assert await waiting is False
    rows = pg_rows(postgres_url, "SELECT id FROM jobs WHERE dispatched_at IS NOT NULL")
    assert [row["id"] for row in rows] == ["job_1"]


async def test_a_job_read_to_be_moved_is_locked_until_the_move_commits(
    postgres_url: str, sessions: Callable[[], Session]
) -> None:
    """Two transactions that read a job to move it run one after the other: the second reads the first's
    outcome (a final job, which it leaves alone), never the state both started from."""
    write(postgres_url, lambda tx: insert_job(tx, "job_1"))
    (first, first_tx), (second, second_tx) = sessions(), sessions()
    assert jobs.get_state(first_tx, "job_1").status is JobStatus.PENDING

    def read_second() -> JobStatus:
        status = jobs.get_state(second_tx, "job_1").status
        second.commit()
        return status

    waiting = asyncio.create_task(asyncio.to_thread(read_second))
    await waiting_on_a_lock(postgres_url, second)
    jobs.update_status(
        first_tx, "job_1", status=JobStatus.SUCCEEDED, result=None, provider_result=None, error=None,
        completed_at=T0, now=T0,
    )  # fmt: skip
    first.commit()
    assert await waiting is JobStatus.SUCCEEDED


def test_a_final_job_is_never_moved(postgres_url: str) -> None:
    """A status update of a job already final changes nothing (the backstop for a transaction that read the job
    without its lock)."""

    def finish(status: JobStatus, at: float) -> Callable[[Transaction], None]:
        def update(tx: Transaction) -> None:
            jobs.update_status(
                tx, "job_1", status=status, result=None, provider_result=None, error={"at": at},
                completed_at=at, now=at,
            )  # fmt: skip

        return update

    write(postgres_url, lambda tx: insert_job(tx, "job_1"))
    write(postgres_url, finish(JobStatus.CANCELLED, T0))
    write(postgres_url, finish(JobStatus.FAILED, T0 + 1))
    [row] = pg_rows(postgres_url, "SELECT status, error, completed_at FROM jobs")
    assert (row["status"], json.loads(row["error"]), row["completed_at"]) == ("cancelled", {"at": T0}, T0)


def test_reconcilers_at_once_never_queue_the_same_poll(postgres_url: str, sessions: Callable[[], Session]) -> None:
    """A due poll goes to one reconciler: another one at the same time skips the job the first holds (without
    waiting), and once the first has scheduled the next poll and committed, the job is no longer due."""

    def submitted(tx: Transaction) -> None:
        insert_job(tx, "job_1")
        jobs.record_submission(
            tx, "job_1", request_id="req_1", urls=None, error=None, next_poll_at=T0, poll_base_s=10, now=T0
        )

    write(postgres_url, submitted)
    (first, first_tx), (_, second_tx) = sessions(), sessions()
    assert [row["id"] for row in jobs.due_polls(first_tx, now=T0, limit=10)] == ["job_1"]
    assert jobs.due_polls(second_tx, now=T0, limit=10) == []
    jobs.schedule_next_poll(first_tx, "job_1", next_poll_at=T0 + 20)
    first.commit()
    assert jobs.due_polls(second_tx, now=T0, limit=10) == []
