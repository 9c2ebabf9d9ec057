"""The storage contract for the inbox: every provider event kept once, byte for byte, in arrival order."""

from __future__ import annotations

from receiver.models import JobStatus, Outcome, ProviderEvent
from receiver.storage import inbox
from receiver.storage.base import Database
from tests.helpers.storage_rows import T0, AddJob


def event(job_id: str, dedup_key: str, *, kind: str = "webhook", body: bytes = b'{"ok":true}') -> ProviderEvent:
    return ProviderEvent(
        provider="fal",
        kind=kind,  # type: ignore[arg-type]
        dedup_key=dedup_key,
        job_id=job_id,
        request_id="req-1",
        outcome=Outcome(JobStatus.SUCCEEDED),
        body=body,
        headers={"x-fal-webhook-request-id": "req-1"},
    )


async def test_same_dedup_key_twice_is_one_row(database: Database, add_job: AddJob) -> None:
    """The first insert of an event is new; the same provider, kind and dedup key again is reported as a
    duplicate and writes nothing, even with another body."""
    job_id = await add_job()
    assert await database.write(lambda tx: inbox.insert(tx, event(job_id, "req-1"), now=T0))
    assert not await database.write(lambda tx: inbox.insert(tx, event(job_id, "req-1", body=b"other"), now=T0 + 1))
    rows = await inbox.list_for_job(database, job_id)
    assert [(row["kind"], row["dedup_key"], bytes(row["body"]), row["received_at"]) for row in rows] == [
        ("webhook", "req-1", b'{"ok":true}', T0)
    ]


async def test_a_duplicate_in_the_same_transaction_is_reported_too(database: Database, add_job: AddJob) -> None:
    """Two inserts of one event inside one transaction: the second is the duplicate."""
    job_id = await add_job()
    results = await database.write(
        lambda tx: (inbox.insert(tx, event(job_id, "k"), now=T0), inbox.insert(tx, event(job_id, "k"), now=T0))
    )
    assert results == (True, False)
    assert len(await inbox.list_for_job(database, job_id)) == 1


async def test_events_are_kept_in_order_with_what_they_meant(database: Database, add_job: AddJob) -> None:
    """Distinct keys, or one key under another kind, are separate events, listed in arrival order with their
    headers, raw body and outcome; another job's events are not listed."""
    job_id, other = await add_job(), await add_job()
    body = b'{"payload": {"images": []}, "\xff": 1}'  # raw bytes as received, not re-serialised
    for item in [event(job_id, "a", body=body), event(job_id, "a", kind="poll"), event(job_id, "b"), event(other, "c")]:
        assert await database.write(lambda tx, item=item: inbox.insert(tx, item, now=T0))
    rows = await inbox.list_for_job(database, job_id)
    assert [(row["kind"], row["dedup_key"], row["outcome"]) for row in rows] == [
        ("webhook", "a", "succeeded"),
        ("poll", "a", "succeeded"),
        ("webhook", "b", "succeeded"),
    ]
    assert bytes(rows[0]["body"]) == body
    assert rows[0]["provider"] == "fal"
    assert rows[0]["headers"] == '{"x-fal-webhook-request-id":"req-1"}'
