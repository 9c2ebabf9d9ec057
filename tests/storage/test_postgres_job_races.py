"""Two transitions of one job in two real concurrent PostgreSQL transactions (two `Database`s, as two
processes would have): each decides on the job's state under its row lock, so the one that waits sees what
the other committed. SQLite needs none of it: its writer is exclusive.

The first transaction holds the job (its body has applied its transition and waits, uncommitted) until
the second is seen waiting for a lock; then the first commits and the second decides."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from receiver.errors import ConflictError
from receiver.jobs.transitions import Ingest, Resubmit, apply_event, cancel_job, move_job
from receiver.models import JobStatus, Outcome, ProviderEvent
from receiver.storage import jobs
from receiver.storage.base import Transaction
from receiver.storage.postgres import Database
from tests.helpers.postgres import read_pg_rows
from tests.helpers.storage_rows import T0, insert_job
from tests.helpers.waiting import until

JOB = "job_race"
REQUEST = "req_race"
HOLD_S = 30.0  # bound on each wait below (never reached unless the test is broken)


@pytest.fixture
async def two_databases(postgres_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two open `Database`s on one fresh database, and a running fal job with a request id in it."""
    first, second = Database(postgres_url), Database(postgres_url)
    await first.open()
    await second.open()
    try:

        def running(tx: Transaction) -> None:
            insert_job(tx, JOB)
            jobs.bind_request_id(tx, JOB, REQUEST, now=T0)
            move_job(tx, jobs.get_state(tx, JOB), Outcome(JobStatus.RUNNING), T0)

        await first.write(running)
        yield first, second
    finally:
        await first.close()
        await second.close()


def succeeded_webhook() -> ProviderEvent:
    body = b'{"status":"OK","request_id":"req_race","payload":{"images":[]}}'
    outcome = Outcome(JobStatus.SUCCEEDED, result={"images": []}, provider_result={"images": []})
    return ProviderEvent("fal", "webhook", "fal:webhook:req_race", JOB, REQUEST, outcome, body)


async def waiting_for_a_lock(url: str) -> None:
    """Until a backend of this database waits for a lock (the second transaction, behind the first's)."""
    sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"

    async def waiting() -> bool:
        return bool(await read_pg_rows(url, sql))

    await until(waiting, timeout_s=HOLD_S, what="the second transaction waiting for the first's lock")


async def race(
    url: str, first: Database, holder: Callable[[Transaction], Any], second: Callable[[], Awaitable[Any]]
) -> tuple[Any, BaseException | None]:
    """Run `holder` in `first` and keep it uncommitted until `second()` waits for a lock; then commit it.
    Returns (what `holder` returned, what `second()` raised or None)."""
    applied, release = threading.Event(), threading.Event()

    def hold(tx: Transaction) -> Any:
        result = holder(tx)
        applied.set()
        release.wait(HOLD_S)  # a sync wait on the writer thread: the transaction stays open meanwhile
        return result

    holding = asyncio.create_task(first.write(hold))
    try:
        assert await asyncio.to_thread(applied.wait, HOLD_S)
        deciding = asyncio.create_task(second())
        await waiting_for_a_lock(url)
    finally:
        release.set()
    held = await holding
    try:
        await deciding
    except Exception as exc:  # the caller checks what it was
        return held, exc
    return held, None


async def tasks_of_job(url: str) -> list[tuple[str, str | None]]:
    rows = await read_pg_rows(url, "SELECT kind, payload FROM tasks WHERE job_id = %(job)s ORDER BY id", {"job": JOB})
    return [(row["kind"], row["payload"]) for row in rows]


async def test_a_cancel_racing_a_final_webhook_queues_no_cancelled_notification(
    postgres_url: str, two_databases: tuple[Database, Database]
) -> None:
    """The webhook's transaction has made the job succeeded, uncommitted, when the cancel reads it: the
    cancel waits for its commit, finds the job final and refuses (`already_final`), queueing nothing. Read
    without the lock, the cancel would see `running`, fail to overwrite the final state, and still queue a
    `job.cancelled` notification and a provider cancel."""
    first, second = two_databases
    moved, raised = await race(
        postgres_url,
        first,
        lambda tx: apply_event(tx, succeeded_webhook(), T0 + 1, Resubmit()),
        lambda: second.write(lambda tx: cancel_job(tx, JOB, T0 + 2)),
    )
    assert moved is Ingest.APPLIED
    assert isinstance(raised, ConflictError) and raised.code == "already_final", raised
    job = await jobs.read(first, JOB)
    assert job.status is JobStatus.SUCCEEDED and job.error is None
    assert [kind for kind, _ in await tasks_of_job(postgres_url)] == ["fetch_images"]


async def test_a_webhook_racing_a_cancel_leaves_the_job_cancelled(
    postgres_url: str, two_databases: tuple[Database, Database]
) -> None:
    """The other order: the cancel's transaction holds the job when the webhook comes; the webhook waits,
    finds the job final, keeps its body in the inbox and moves nothing (no image copy queued)."""
    first, second = two_databases
    cancelled, raised = await race(
        postgres_url,
        first,
        lambda tx: cancel_job(tx, JOB, T0 + 1),
        lambda: second.write(lambda tx: apply_event(tx, succeeded_webhook(), T0 + 2, Resubmit())),
    )
    assert raised is None and cancelled.status is JobStatus.CANCELLED
    job = await jobs.read(first, JOB)
    assert job.status is JobStatus.CANCELLED
    tasks = await tasks_of_job(postgres_url)
    assert [kind for kind, _ in tasks] == ["notify", "cancel"], tasks
    assert '"job.cancelled"' in str(tasks[0][1])
