"""The storage contract for jobs: state moves (allowed, refused, final), what a final state queues, the
provider slots, request ids, idempotency keys, polls and timeouts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from receiver.errors import ConflictError, NotFoundError
from receiver.jobs.transitions import cancel_job, expire_jobs, move_job
from receiver.models import Job, JobState, JobStatus, Outcome, Task
from receiver.storage import jobs, tasks
from receiver.storage.base import Database, Transaction, UniqueViolation
from tests.helpers.storage_rows import T0, AddJob

SUCCESS = Outcome(JobStatus.SUCCEEDED, result={"images": [{"url": "https://x/1.png"}]}, provider_result={"raw": 1})
FAILURE = Outcome(JobStatus.FAILED, error={"code": "model_error", "message": "no"})


async def move(database: Database, job_id: str, outcome: Outcome, now: float = T0) -> bool:
    return await database.write(lambda tx: move_job(tx, jobs.get_state(tx, job_id), outcome, now))


async def claim_all(database: Database, now: float = T0) -> list[Task]:
    """Every due task, leased to "test" (a way to see what is queued through the store alone)."""
    return await database.write(
        lambda tx: tasks.claim(tx, owner="test", kinds=[], exclude=True, limit=100, lease_expires_at=now + 60, now=now)
    )


async def queued(database: Database, now: float = T0) -> list[tuple[str, str | None, dict[str, Any]]]:
    return [(task.kind, task.job_id, task.payload) for task in await claim_all(database, now)]


async def test_insert_and_read_a_job(database: Database, add_job: AddJob) -> None:
    """A new job is pending, with its input, metadata and callback as given and no timings but creation."""
    job_id = await add_job(input={"prompt": "a cat", "n": 2}, metadata={"run": 1}, callback_url="https://cb/x")
    job = await jobs.read(database, job_id)
    assert (job.status, job.provider, job.model) == (JobStatus.PENDING, "fal", "m")
    assert job.input == {"prompt": "a cat", "n": 2}
    assert (job.metadata, job.callback_url) == ({"run": 1}, "https://cb/x")
    assert job.created_at.timestamp() == T0 and job.completed_at is None and job.provider_request_id is None
    assert job == await database.write(lambda tx: jobs.get(tx, job_id))


async def test_missing_job_is_not_found(database: Database) -> None:
    """Reading a job that does not exist raises NotFoundError, in a transaction and out of one."""
    with pytest.raises(NotFoundError):
        await database.write(lambda tx: jobs.get_state(tx, "job_missing"))
    with pytest.raises(NotFoundError):
        await jobs.read(database, "job_missing")


async def test_forward_moves_are_applied_up_to_a_final_state(database: Database, add_job: AddJob) -> None:
    """pending -> submitted -> running -> succeeded: each step moves the job; the final one stores the
    result, sets completed_at, marks the images pending and queues their copy (and nothing else)."""
    job_id = await add_job()
    assert await move(database, job_id, Outcome(JobStatus.SUBMITTED), T0 + 1)
    assert await move(database, job_id, Outcome(JobStatus.RUNNING), T0 + 2)
    assert (await jobs.read(database, job_id)).status is JobStatus.RUNNING
    assert await queued(database) == []  # unfinished states queue nothing
    assert await move(database, job_id, SUCCESS, T0 + 3)
    job = await jobs.read(database, job_id)
    assert (job.status, job.result, job.provider_result, job.error) == (
        JobStatus.SUCCEEDED,
        SUCCESS.result,
        {"raw": 1},
        None,
    )
    assert job.completed_at is not None and job.completed_at.timestamp() == T0 + 3
    assert job.images_status == "pending"
    assert await queued(database, T0 + 3) == [("fetch_images", job_id, {})]


@pytest.mark.parametrize(
    ("start", "outcome"),
    [
        ([JobStatus.RUNNING], Outcome(JobStatus.SUBMITTED)),
        ([JobStatus.RUNNING], Outcome(JobStatus.RUNNING)),
        ([JobStatus.SUBMITTED], Outcome(JobStatus.PENDING)),
        ([JobStatus.SUCCEEDED], FAILURE),
        ([JobStatus.FAILED], SUCCESS),
        ([JobStatus.CANCELLED], Outcome(JobStatus.RUNNING)),
    ],
    ids=[
        "running-back-to-submitted",
        "running-again",
        "back-to-pending",
        "succeeded-then-failed",
        "failed-then-succeeded",
        "cancelled-then-running",
    ],
)
async def test_backward_or_out_of_final_moves_are_refused(
    database: Database, add_job: AddJob, start: list[JobStatus], outcome: Outcome
) -> None:
    """A move that is not a step forward, or out of a final state, changes nothing and queues nothing."""
    job_id = await add_job()
    for status in start:
        error = {"code": "x", "message": "x"} if status is not JobStatus.SUCCEEDED else None
        assert await move(database, job_id, Outcome(status, error=error), T0 + 1)
    before = await jobs.read(database, job_id)
    await claim_all(database, T0 + 1)  # what the first moves queued
    assert not await move(database, job_id, outcome, T0 + 2)
    assert await jobs.read(database, job_id) == before
    assert await queued(database, T0 + 2) == []


@pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.CANCELLED], ids=["failed", "cancelled"])
async def test_any_other_end_queues_its_notification(database: Database, add_job: AddJob, status: JobStatus) -> None:
    """A job that fails or is cancelled keeps its error, gets completed_at, and queues `notify` at once."""
    job_id = await add_job()
    assert await move(database, job_id, Outcome(status, error={"code": "c", "message": "m"}), T0 + 5)
    job = await jobs.read(database, job_id)
    assert (job.status, job.error, job.images_status) == (status, {"code": "c", "message": "m"}, None)
    assert job.completed_at is not None and job.completed_at.timestamp() == T0 + 5
    assert await queued(database, T0 + 5) == [("notify", job_id, {"event": f"job.{status.value}"})]


async def test_cancel_asks_the_provider_to_stop_only_when_it_has_the_request(
    database: Database, add_job: AddJob
) -> None:
    """Cancelling a job the provider has queues `notify` and `cancel`; one never sent queues `notify`;
    cancelling a final job is refused with `already_final`."""
    sent, unsent = await add_job(), await add_job()
    await database.write(lambda tx: jobs.bind_request_id(tx, sent, "req-1", now=T0))
    cancelled: Job = await database.write(lambda tx: cancel_job(tx, sent, T0 + 1))
    assert cancelled.status is JobStatus.CANCELLED and cancelled.error == {
        "code": "cancelled",
        "message": "cancelled by the API caller",
    }
    await database.write(lambda tx: cancel_job(tx, unsent, T0 + 1))
    assert sorted(await queued(database, T0 + 1)) == [
        ("cancel", sent, {}),
        ("notify", sent, {"event": "job.cancelled"}),
        ("notify", unsent, {"event": "job.cancelled"}),
    ]
    with pytest.raises(ConflictError) as raised:
        await database.write(lambda tx: cancel_job(tx, sent, T0 + 2))
    assert raised.value.code == "already_final"


async def test_timeout_fails_open_jobs_through_the_one_transition(database: Database, add_job: AddJob) -> None:
    """`expire_jobs` fails the open jobs created by the deadline like any other failure (error, completed_at,
    `notify`), asks the provider to stop the ones it has, and leaves newer and final jobs alone."""
    old_sent = await add_job(now=T0)
    old_unsent = await add_job(now=T0 + 1)
    old_final = await add_job(now=T0)
    young = await add_job(now=T0 + 100)
    await database.write(lambda tx: jobs.bind_request_id(tx, old_sent, "req-1", now=T0))
    assert await move(database, old_final, SUCCESS, T0 + 2)
    await claim_all(database, T0 + 2)
    expired = await database.write(lambda tx: expire_jobs(tx, deadline=T0 + 10, now=T0 + 20, timeout_s=600))
    assert expired == [old_sent, old_unsent]
    for job_id in expired:
        job = await jobs.read(database, job_id)
        assert job.status is JobStatus.FAILED
        assert job.error == {"code": "timeout", "message": "no final result from the provider within 600 s"}
        assert job.completed_at is not None and job.completed_at.timestamp() == T0 + 20
    assert sorted(await queued(database, T0 + 20)) == [
        ("cancel", old_sent, {}),
        ("notify", old_sent, {"event": "job.failed"}),
        ("notify", old_unsent, {"event": "job.failed"}),
    ]
    assert (await jobs.read(database, young)).status is JobStatus.PENDING
    assert (await jobs.read(database, old_final)).status is JobStatus.SUCCEEDED
    assert await database.write(lambda tx: expire_jobs(tx, deadline=T0 + 10, now=T0 + 30, timeout_s=600)) == []


async def test_provider_slots_are_limited(database: Database, add_job: AddJob) -> None:
    """`claim_dispatch` takes a slot once per job, up to the provider's concurrency; a released slot is free
    again; another provider's jobs do not count."""
    first, second, other = await add_job(), await add_job(), await add_job(provider="wavespeed")

    def claim(job_id: str, provider: str = "fal") -> Any:
        return database.write(
            lambda tx: jobs.claim_dispatch(
                tx, job_id, provider=provider, concurrency=1, rate_per_min=0, synchronous=False, now=T0
            )
        )

    assert await claim(first)
    assert not await claim(first)  # it has its slot
    assert not await claim(second)  # fal is full
    assert await claim(other, "wavespeed")
    await database.write(lambda tx: jobs.release_dispatch(tx, first, now=T0))
    assert await claim(second)
    assert (await jobs.read(database, second)).provider_attempts == 1


async def test_a_request_id_belongs_to_one_job(database: Database, add_job: AddJob) -> None:
    """Recording a submission makes a pending job submitted with its request id; the same request id for a
    second job of the provider is a UniqueViolation."""
    first, second = await add_job(), await add_job()

    def record(job_id: str) -> Any:
        def write(tx: Transaction) -> None:
            jobs.record_submission(
                tx, job_id, request_id="req-1", urls={"status": "https://q/1"}, error=None, next_poll_at=T0 + 60,
                poll_base_s=10, now=T0 + 1,
            )  # fmt: skip

        return database.write(write)

    await record(first)
    job = await jobs.read(database, first)
    assert (job.status, job.provider_request_id, job.provider_urls) == (
        JobStatus.SUBMITTED,
        "req-1",
        {"status": "https://q/1"},
    )
    with pytest.raises(UniqueViolation):
        await record(second)
    assert (await jobs.read(database, second)).provider_request_id is None


async def test_superseded_requests_are_remembered(database: Database, add_job: AddJob) -> None:
    """A request given up for a fresh submit is remembered (twice is harmless); the job's request is reset."""
    job_id = await add_job()
    await database.write(lambda tx: jobs.bind_request_id(tx, job_id, "req-1", now=T0))

    def give_up(tx: Transaction) -> None:
        jobs.supersede_request(tx, job_id, provider="fal", request_id="req-1", now=T0)
        jobs.supersede_request(tx, job_id, provider="fal", request_id="req-1", now=T0)
        jobs.reset_for_resubmit(tx, job_id, error={"code": "x", "message": "retry"}, now=T0)

    await database.write(give_up)

    def state_for(request_id: str | None) -> Callable[[Transaction], tuple[JobState, bool]]:
        return lambda tx: jobs.get_state_for_event(tx, job_id, request_id=request_id)

    for request_id, superseded in (("req-1", True), ("req-2", False), (None, False)):
        state, found = await database.write(state_for(request_id))
        assert (state.id, state.provider, state.provider_request_id, found) == (job_id, "fal", None, superseded)
    job = await jobs.read(database, job_id)
    assert (job.provider_request_id, job.error) == (None, {"code": "x", "message": "retry"})


async def test_the_state_for_an_event_of_a_missing_job_is_not_found(database: Database) -> None:
    """Reading the state an event needs of a job that does not exist is `NotFoundError`."""
    with pytest.raises(NotFoundError):
        await database.write(lambda tx: jobs.get_state_for_event(tx, "no-such-job", request_id="req-1"))


async def test_idempotency_key_is_claimed_once(database: Database, add_job: AddJob) -> None:
    """The first claim of a key stores it; a second claim writes nothing and finds the first job."""
    first, second = await add_job(), await add_job()
    key = {"scope": "POST /v1/jobs", "key": "k1", "fingerprint": "f"}
    assert await database.write(lambda tx: jobs.claim_idempotency_key(tx, **key, job_id=first, now=T0))
    assert not await database.write(lambda tx: jobs.claim_idempotency_key(tx, **key, job_id=second, now=T0 + 1))
    row = await jobs.read_idempotency_key(database, scope="POST /v1/jobs", key="k1")
    assert row is not None and (row["job_id"], row["fingerprint"]) == (first, "f")
    assert await jobs.read_idempotency_key(database, scope="POST /v1/jobs", key="k2") is None


async def test_due_polls_come_oldest_first_and_are_rescheduled(database: Database, add_job: AddJob) -> None:
    """Open jobs whose next poll is due are found, most overdue first; scheduling counts the poll."""
    late, early, not_yet = await add_job(), await add_job(), await add_job()
    for job_id, next_poll_at in [(late, T0 + 20), (early, T0 + 10), (not_yet, T0 + 99)]:
        await database.write(
            lambda tx, job_id=job_id, at=next_poll_at: jobs.record_submission(
                tx, job_id, request_id=f"req-{job_id}", urls=None, error=None, next_poll_at=at, poll_base_s=5,
                now=T0,
            )
        )  # fmt: skip
    due = await database.write(lambda tx: jobs.due_polls(tx, now=T0 + 30, limit=10))
    assert [(row["id"], row["poll_count"], row["poll_base_s"]) for row in due] == [(early, 0, 5), (late, 0, 5)]
    await database.write(lambda tx: jobs.schedule_next_poll(tx, early, next_poll_at=T0 + 100))
    assert [row["id"] for row in await database.write(lambda tx: jobs.due_polls(tx, now=T0 + 30, limit=10))] == [late]
    assert (await jobs.read(database, early)).poll_count == 1


async def test_pages_and_filters(database: Database, add_job: AddJob) -> None:
    """Jobs list newest first, filtered by status and provider, continued after a cursor."""
    ids = [await add_job(provider="fal" if n % 2 else "wavespeed") for n in range(5)]
    await move(database, ids[0], FAILURE)
    page = await jobs.list_page(database, status=None, provider=None, cursor=None, limit=2)
    assert [job.id for job in page] == [ids[4], ids[3]]
    after = await jobs.list_page(database, status=None, provider=None, cursor=ids[3], limit=10)
    assert [job.id for job in after] == [ids[2], ids[1], ids[0]]
    fal = await jobs.list_page(database, status=None, provider="fal", cursor=None, limit=10)
    assert [job.id for job in fal] == [ids[3], ids[1]]
    failed = await jobs.list_page(database, status="failed", provider=None, cursor=None, limit=10)
    assert [job.id for job in failed] == [ids[0]]


async def test_input_images_are_served_by_key(database: Database, add_job: AddJob) -> None:
    """An input image comes back with its content type and exact bytes; an unknown key is not found."""
    job_id = await add_job()
    data = bytes(range(256))
    await database.write(
        lambda tx: jobs.insert_input(tx, "key-1", job_id=job_id, content_type="image/png", data=data, now=T0)
    )
    assert await jobs.read_input(database, "key-1") == ("image/png", data)
    with pytest.raises(NotFoundError):
        await jobs.read_input(database, "key-2")
