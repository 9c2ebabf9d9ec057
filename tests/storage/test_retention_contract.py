"""Storage contract, retention: which jobs and rows a purge may take, and their deletion children first.

Every test runs against each backend (`database`), through the stores and the `Database` API only.
"""

from __future__ import annotations

from receiver.models import JobStatus, Outcome, ProviderEvent
from receiver.storage import events, inbox, jobs, retention, tasks
from receiver.storage.base import Database, Transaction
from tests.helpers.storage_rows import insert_job

DAY_S = 86400.0
NOW = 100 * DAY_S
OLD = NOW - 40 * DAY_S
JOB_TABLES = ("delivery_attempts", "deliveries", "events", "tasks", "inbox", "inputs")
SEEDED = {**dict.fromkeys(JOB_TABLES, 1), "tasks": 0}


def add_final_job(tx: Transaction, job_id: str, *, at: float, status: str = "succeeded") -> None:
    """A job finished at `at` with what its life leaves: an inbox row, an input, an event with a delivered
    delivery and one attempt (its finished tasks are the tasks store's to seed)."""
    insert_job(tx, job_id, now=at)
    jobs.update_status(
        tx, job_id, status=JobStatus(status), result=None, provider_result=None, error=None, completed_at=at, now=at
    )
    event = ProviderEvent(
        provider="fal", kind="webhook", dedup_key=f"req-{job_id}", job_id=job_id, request_id=None,
        outcome=Outcome(JobStatus(status)), body=b"{}",
    )  # fmt: skip
    inbox.insert(tx, event, now=at)
    jobs.insert_input(tx, f"in-{job_id}", job_id=job_id, content_type="image/png", data=b"x", now=at)
    events.insert_event(tx, f"evt-{job_id}", event_type=f"job.{status}", job_id=job_id, payload={}, now=at)
    events.insert_delivery(
        tx, f"dlv-{job_id}", event_id=f"evt-{job_id}", subscription_id=None, target="callback",
        url="https://cb.example/", webhook_id=f"msg-{job_id}", now=at,
    )  # fmt: skip
    events.insert_attempt(tx, delivery_id=f"dlv-{job_id}", now=at, status_code=200, latency_ms=1.0, error=None)
    events.update_delivery(
        tx, f"dlv-{job_id}", status="delivered", attempted=1, last_error=None, next_attempt_at=None,
        delivered_at=at, now=at,
    )  # fmt: skip


async def test_purgeable_jobs_are_old_final_and_idle(database: Database) -> None:
    """Old final jobs are purgeable oldest first; not a recent one, not one with live work, and never the
    owner of the newest event."""

    def setup(tx: Transaction) -> None:
        add_final_job(tx, "job_old2", at=OLD + 2)
        add_final_job(tx, "job_old1", at=OLD + 1)
        add_final_job(tx, "job_busy", at=OLD + 3)
        tasks.insert(tx, "notify", "job_busy", OLD + 3)  # still pending
        add_final_job(tx, "job_recent", at=NOW - DAY_S)
        add_final_job(tx, "job_newest_event", at=OLD + 4)

    await database.write(setup)

    def purgeable(tx: Transaction) -> list[str]:
        return retention.purgeable_jobs(tx, job_cutoff=NOW - 30 * DAY_S, key_cutoff=NOW - DAY_S, limit=None)

    assert await database.write(purgeable) == ["job_old1", "job_old2"]
    one = await database.write(
        lambda tx: retention.purgeable_jobs(tx, job_cutoff=NOW - 30 * DAY_S, key_cutoff=NOW - DAY_S, limit=1)
    )
    assert one == ["job_old1"]


async def test_a_jobs_rows_are_deleted_children_first_then_the_job(database: Database) -> None:
    """Each table's rows of the jobs, deleted in foreign-key order, leave the job with nothing; then the
    job itself is among the emptied ones and goes too. Other jobs keep every row."""

    def setup(tx: Transaction) -> None:
        add_final_job(tx, "job_gone", at=OLD)
        add_final_job(tx, "job_kept", at=OLD)

    await database.write(setup)

    def purge(tx: Transaction) -> dict[str, int]:
        counts = {}
        assert retention.rows_of_jobs(tx, "jobs", ["job_gone"], limit=None) == []  # it still owns rows
        for table in JOB_TABLES:
            keys = retention.rows_of_jobs(tx, table, ["job_gone"], limit=None)
            counts[table] = len(keys)
            retention.delete_rows(tx, table, keys)
        assert retention.rows_of_jobs(tx, "job_images", ["job_gone"], limit=None) == []
        emptied = retention.rows_of_jobs(tx, "jobs", ["job_gone", "job_kept"], limit=None)
        assert emptied == ["job_gone"]
        retention.delete_rows(tx, "jobs", emptied)
        return counts

    assert await database.write(purge) == SEEDED
    kept = await database.write(
        lambda tx: {table: len(retention.rows_of_jobs(tx, table, ["job_kept"], limit=None)) for table in JOB_TABLES}
    )
    assert kept == SEEDED
    assert await events.read_delivery(database, "dlv-job_gone") is None
    assert await events.read_delivery(database, "dlv-job_kept") is not None


async def test_old_finished_rows_are_found_by_cutoff_outside_the_jobs_kept_apart(database: Database) -> None:
    """The row phase finds old final deliveries (and their attempts), events, done tasks and inbox rows of
    final jobs before the cutoff, never those of the jobs named in `keep_jobs`, nor the newest event."""

    def setup(tx: Transaction) -> None:
        add_final_job(tx, "job_a", at=OLD)
        add_final_job(tx, "job_b", at=OLD)
        add_final_job(tx, "job_new", at=NOW)

    await database.write(setup)
    cutoff = NOW - 30 * DAY_S

    def found(tx: Transaction, keep: list[str]) -> dict[str, int]:
        counts = {
            table: len(retention.old_rows(tx, table, cutoff=cutoff, keep_jobs=keep, limit=None))
            for table in ("deliveries", "events", "tasks", "inbox", "idempotency_keys")
        }
        deliveries = retention.old_rows(tx, "deliveries", cutoff=cutoff, keep_jobs=keep, limit=None)
        counts["delivery_attempts"] = len(retention.attempts_of(tx, deliveries, limit=None))
        return counts

    assert await database.write(lambda tx: found(tx, [])) == {
        "deliveries": 2, "events": 2, "tasks": 0, "inbox": 2, "idempotency_keys": 0, "delivery_attempts": 2,
    }  # fmt: skip
    assert await database.write(lambda tx: found(tx, ["job_a"])) == {
        "deliveries": 1, "events": 1, "tasks": 0, "inbox": 1, "idempotency_keys": 0, "delivery_attempts": 1,
    }  # fmt: skip
    one = await database.write(lambda tx: retention.old_rows(tx, "inbox", cutoff=cutoff, limit=1))
    assert len(one) == 1

    def delete_deliveries(tx: Transaction) -> None:
        chosen = retention.old_rows(tx, "deliveries", cutoff=cutoff, limit=None)
        retention.delete_rows(tx, "delivery_attempts", retention.attempts_of(tx, chosen, limit=None))
        retention.delete_rows(tx, "deliveries", chosen)

    await database.write(delete_deliveries)
    assert await events.read_delivery(database, "dlv-job_a") is None
    assert await events.read_delivery(database, "dlv-job_new") is not None
    assert (await database.write(lambda tx: found(tx, [])))["events"] == 2  # free of deliveries now, still old
