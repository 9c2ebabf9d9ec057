"""The storage contract, the interface itself: transaction bodies, rollback, errors, rows as mappings."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from receiver.errors import NotFoundError
from receiver.models import Job
from receiver.storage import jobs, tasks
from receiver.storage.base import (
    Database,
    DatabaseClosed,
    IntegrityViolation,
    StorageError,
    Transaction,
    UniqueViolation,
)
from tests.helpers.storage_rows import T0, AddJob


async def test_a_body_returns_its_result_once_committed(database: Database, add_job: AddJob) -> None:
    """`write` returns what the body returned; a read issued after it sees the body's work."""

    def write(tx: Transaction) -> Job:
        jobs.insert(tx, "job_a", provider="fal", model="m", input={"prompt": "p"}, metadata=None, callback_url=None,
                    now=T0)  # fmt: skip
        return jobs.get(tx, "job_a")

    job = await database.write(write)
    assert (job.id, job.status, job.input) == ("job_a", "pending", {"prompt": "p"})
    assert await jobs.read(database, "job_a") == job


async def test_rows_are_plain_mappings_by_column_name(database: Database, add_job: AddJob) -> None:
    """Reads and transaction reads give mappings of column name to value; `value` is the first column."""
    job_id = await add_job()

    def read(tx: Transaction) -> tuple[object, object, object]:
        return (
            tx.one("select_job_state", id=job_id),
            tx.all("select_job_state", id=job_id),
            tx.value("select_job_state", id=job_id),
        )

    one, every, value = await database.write(read)
    expected = {"id": job_id, "provider": "fal", "status": "pending", "provider_request_id": None}
    expected["provider_attempts"] = 0
    assert isinstance(one, Mapping) and dict(one) == expected
    assert isinstance(every, list) and [dict(row) for row in every] == [expected]
    assert value == job_id
    row = await database.one("select_job_state", id=job_id)
    assert isinstance(row, Mapping) and dict(row) == expected
    assert [dict(row) for row in await database.all("select_job_state", id=job_id)] == [expected]
    assert await database.value("select_job_state", id=job_id) == job_id


async def test_no_row_is_none(database: Database) -> None:
    """`one` and `value` of a query that finds nothing are None; `all` is empty."""
    assert await database.one("select_job", id="job_missing") is None
    assert await database.value("select_job", id="job_missing") is None
    assert await database.all("select_job", id="job_missing") == []
    assert await database.write(lambda tx: (tx.one("select_job", id="x"), tx.value("select_job", id="x"))) == (
        None,
        None,
    )
    with pytest.raises(NotFoundError):
        await jobs.read(database, "job_missing")


async def test_duplicate_key_is_a_unique_violation(database: Database, add_job: AddJob) -> None:
    """Inserting a row whose key exists raises `UniqueViolation` (a `StorageError`), not a driver error."""
    job_id = await add_job()
    with pytest.raises(UniqueViolation) as raised:
        await add_job(job_id)
    assert isinstance(raised.value, StorageError)
    assert raised.value.__cause__ is not None  # the driver's own error, kept for the logs


async def test_broken_foreign_key_is_an_integrity_violation(database: Database) -> None:
    """A row pointing at a missing row raises `IntegrityViolation`, which is not a `UniqueViolation`."""
    with pytest.raises(IntegrityViolation) as raised:
        await database.write(lambda tx: tasks.insert(tx, "poll", "job_missing", T0))
    assert not isinstance(raised.value, UniqueViolation)


async def test_a_foreign_key_broken_at_commit_is_an_integrity_violation(database: Database, add_job: AddJob) -> None:
    """A body that leaves a deferred foreign key broken (an Idempotency-Key naming a job never inserted) fails
    when its transaction commits: its caller gets an `IntegrityViolation` carrying the driver's error, nothing
    of it is stored, and later writes work."""
    key = {"scope": "POST /v1/jobs", "key": "k1", "fingerprint": "f"}
    with pytest.raises(IntegrityViolation) as raised:
        await database.write(lambda tx: jobs.claim_idempotency_key(tx, **key, job_id="job_missing", now=T0))
    assert raised.value.__cause__ is not None and not isinstance(raised.value.__cause__, StorageError)
    assert await jobs.read_idempotency_key(database, scope="POST /v1/jobs", key="k1") is None
    job_id = await add_job()
    assert await database.write(lambda tx: jobs.claim_idempotency_key(tx, **key, job_id=job_id, now=T0))


async def test_a_closed_database_refuses_work_with_a_storage_error(database: Database, add_job: AddJob) -> None:
    """After `close`, a write, a read and the health check each raise `DatabaseClosed` (a `StorageError`)
    instead of hanging or leaking a driver error; closing again is harmless."""
    await add_job()
    await database.close()
    with pytest.raises(DatabaseClosed):
        await database.write(lambda tx: tasks.insert(tx, "poll", None, T0))
    with pytest.raises(DatabaseClosed):
        await database.one("select_job", id="job_0001")
    with pytest.raises(DatabaseClosed):
        await database.all("select_job", id="job_0001")
    with pytest.raises(DatabaseClosed):
        await database.write_scrubbed(lambda tx: tasks.insert(tx, "poll", None, T0))
    with pytest.raises(StorageError):
        await database.ping()
    await database.close()


async def test_a_failing_body_rolls_back_only_its_own_work(database: Database, add_job: AddJob) -> None:
    """Of three concurrent bodies the one that raises leaves nothing behind and its caller gets its own
    exception; the other two commit."""

    def insert(job_id: str, *, fail: bool = False) -> object:
        def write(tx: Transaction) -> str:
            jobs.insert(tx, job_id, provider="fal", model="m", input={}, metadata=None, callback_url=None, now=T0)
            tasks.insert(tx, "submit", job_id, T0)
            if fail:
                raise LookupError(f"boom in {job_id}")
            return job_id

        return database.write(write)

    results = await asyncio.gather(insert("job_1"), insert("job_2", fail=True), insert("job_3"), return_exceptions=True)
    assert results[0] == "job_1" and results[2] == "job_3"
    assert isinstance(results[1], LookupError) and str(results[1]) == "boom in job_2"
    assert [job.id for job in await jobs.list_page(database, status=None, provider=None, cursor=None, limit=10)] == [
        "job_3",
        "job_1",
    ]
    claimed = await database.write(
        lambda tx: tasks.claim(tx, owner="o", kinds=["submit"], limit=10, lease_expires_at=T0 + 60, now=T0)
    )
    assert sorted(task.job_id or "" for task in claimed) == ["job_1", "job_3"]


async def test_a_storage_error_rolls_back_the_body_that_hit_it(database: Database, add_job: AddJob) -> None:
    """A body whose statement breaks a constraint loses its earlier statements too; later writes work."""
    taken = await add_job()

    def write(tx: Transaction) -> None:
        jobs.insert(tx, "job_new", provider="fal", model="m", input={}, metadata=None, callback_url=None, now=T0)
        jobs.insert(tx, taken, provider="fal", model="m", input={}, metadata=None, callback_url=None, now=T0)

    with pytest.raises(UniqueViolation):
        await database.write(write)
    with pytest.raises(NotFoundError):
        await jobs.read(database, "job_new")
    assert (await jobs.read(database, await add_job("job_after"))).id == "job_after"


async def test_ping_answers_on_an_open_database(database: Database) -> None:
    """The health check's read succeeds on an open database."""
    await database.ping()


async def test_writes_are_counted(database: Database, add_job: AddJob) -> None:
    """`writes` counts the bodies run and `commits` the commits made, never more commits than bodies."""
    writes, commits = database.writes, database.commits
    await asyncio.gather(*(add_job() for _ in range(20)))
    assert database.writes - writes == 20
    assert 1 <= database.commits - commits <= 20
