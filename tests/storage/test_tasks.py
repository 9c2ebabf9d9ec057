"""The storage contract for the task queue: one live task per kind and job, claims and leases, lease
expiry, retry, defer, release and dead letters, pools and lanes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from receiver.models import Task, TaskStatus
from receiver.storage import tasks
from receiver.storage.base import Database
from tests.helpers.storage_rows import T0, AddJob

LEASE_S = 60.0


async def claim(
    database: Database,
    owner: str = "runner-a",
    *,
    now: float = T0,
    kinds: Iterable[str] = (),
    exclude: bool = True,
    limit: int = 100,
    per_lane: int | None = None,
) -> list[Task]:
    """Put back expired leases, then lease due tasks (by default of every kind), as a runner does."""

    def write(tx: Any) -> list[Task]:
        tasks.release_expired_leases(tx, now=now)
        return tasks.claim(
            tx, owner=owner, kinds=kinds, exclude=exclude, limit=limit, lease_expires_at=now + LEASE_S, now=now,
            per_lane=per_lane,
        )  # fmt: skip

    return await database.write(write)


async def enqueue(database: Database, kind: str, job_id: str | None = None, **options: Any) -> None:
    now = options.pop("now", T0)
    await database.write(lambda tx: tasks.insert(tx, kind, job_id, now, **options))


async def test_claim_leases_a_due_task_once(database: Database, add_job: AddJob) -> None:
    """A claimed task is leased to its owner with its payload and lane (the job's provider), attempt 1; while
    the lease holds nobody else gets it."""
    job_id = await add_job(provider="wavespeed")
    await enqueue(database, "poll", job_id, payload={"n": 7})
    [task] = await claim(database)
    assert (task.kind, task.job_id, task.payload, task.status, task.attempts) == (
        "poll",
        job_id,
        {"n": 7},
        TaskStatus.LEASED,
        1,
    )
    assert (task.lease_owner, task.lease_expires_at, task.interrupted) == ("runner-a", T0 + LEASE_S, False)
    assert await claim(database, "runner-b", now=T0 + LEASE_S - 1) == []


async def test_a_task_is_not_claimed_before_it_is_due(database: Database) -> None:
    """A task queued with a delay is claimed once its time has come, not before."""
    await enqueue(database, "work", delay_s=30)
    assert await claim(database, now=T0 + 29) == []
    assert [task.kind for task in await claim(database, now=T0 + 30)] == ["work"]


async def test_a_second_live_task_of_a_kind_for_a_job_is_a_no_op(database: Database, add_job: AddJob) -> None:
    """While a job has a pending or leased task of a kind, queueing another of that kind does nothing; once
    the first is done, a new one can be queued. Other kinds and other jobs are separate."""
    job_id, other = await add_job(), await add_job()
    await enqueue(database, "poll", job_id, payload={"first": True})
    await enqueue(database, "poll", job_id, payload={"first": False})
    await enqueue(database, "poll", other)
    await enqueue(database, "cancel", job_id)
    claimed = await claim(database)
    assert sorted((task.kind, task.job_id, task.payload) for task in claimed) == [
        ("cancel", job_id, {}),
        ("poll", job_id, {"first": True}),
        ("poll", other, {}),
    ]
    first = next(task for task in claimed if task.kind == "poll" and task.job_id == job_id)
    await enqueue(database, "poll", job_id, now=T0 + 1)  # the first is still leased: a no-op
    assert await claim(database, now=T0 + 1) == []
    assert await database.write(
        lambda tx: tasks.complete(tx, first.id, owner="runner-a", attempts=first.attempts, now=T0 + 2)
    )
    await enqueue(database, "poll", job_id, now=T0 + 3)
    assert [(task.kind, task.job_id) for task in await claim(database, now=T0 + 3)] == [("poll", job_id)]


async def test_complete_is_final(database: Database) -> None:
    """A completed task is never claimed again."""
    await enqueue(database, "work")
    [task] = await claim(database)
    assert await database.write(
        lambda tx: tasks.complete(tx, task.id, owner="runner-a", attempts=task.attempts, now=T0 + 1)
    )
    assert await claim(database, now=T0 + 10 * LEASE_S) == []


async def test_an_expired_lease_is_taken_over(database: Database) -> None:
    """A lease that ran out puts the task back, marked interrupted; the next owner gets it (attempt 2) and
    the first owner can no longer finish it."""
    await enqueue(database, "work")
    [task] = await claim(database, "runner-a")
    assert await claim(database, "runner-b", now=T0 + LEASE_S - 1) == []
    [again] = await claim(database, "runner-b", now=T0 + LEASE_S)
    assert (again.id, again.lease_owner, again.attempts, again.interrupted) == (task.id, "runner-b", 2, True)
    assert again.last_error is not None and "lease expired" in again.last_error
    assert not await database.write(
        lambda tx: tasks.complete(tx, task.id, owner="runner-a", attempts=task.attempts, now=T0 + LEASE_S)
    )
    assert await database.write(
        lambda tx: tasks.complete(tx, again.id, owner="runner-b", attempts=again.attempts, now=T0 + LEASE_S)
    )


async def test_a_stale_run_cannot_finish_its_owners_next_claim_of_the_task(database: Database) -> None:
    """A runner whose run stalled past its lease, and which then claimed the same task again, holds two claims
    of one task under one owner name: the stale run's outcome (complete, retry, kill, defer, release) must not
    end the new claim, whose run has its own outcome to record (found by the multi-process proof: a stale
    `complete` left a job announced by nobody)."""
    await enqueue(database, "work")
    [stale] = await claim(database, "runner-a")
    [fresh] = await claim(database, "runner-a", now=T0 + LEASE_S)
    assert (fresh.id, fresh.attempts) == (stale.id, stale.attempts + 1)
    later = T0 + LEASE_S + 1
    for finish in (
        lambda tx: tasks.complete(tx, stale.id, owner="runner-a", attempts=stale.attempts, now=later),
        lambda tx: tasks.retry(
            tx, stale.id, owner="runner-a", attempts=stale.attempts, run_at=later, error="e", now=later
        ),
        lambda tx: tasks.kill(tx, stale.id, owner="runner-a", attempts=stale.attempts, error="e", now=later),
        lambda tx: tasks.defer(tx, stale.id, owner="runner-a", attempts=stale.attempts, run_at=later, now=later),
        lambda tx: tasks.release(tx, stale.id, owner="runner-a", attempts=stale.attempts, now=later),
    ):
        assert not await database.write(finish)
    assert await database.write(
        lambda tx: tasks.complete(tx, fresh.id, owner="runner-a", attempts=fresh.attempts, now=later)
    )


async def test_extending_a_lease_keeps_the_task(database: Database) -> None:
    """The owner's heartbeat pushes the lease out, so nobody takes the task over; another owner's cannot."""
    await enqueue(database, "work")
    [task] = await claim(database, "runner-a")
    later = T0 + LEASE_S - 1
    assert await database.write(
        lambda tx: tasks.extend_lease(
            tx, task.id, owner="runner-a", attempts=task.attempts, lease_expires_at=later + LEASE_S, now=later
        )
    )
    assert not await database.write(
        lambda tx: tasks.extend_lease(
            tx, task.id, owner="runner-b", attempts=task.attempts, lease_expires_at=T0 + 1000, now=later
        )
    )
    assert await claim(database, "runner-b", now=T0 + LEASE_S + 1) == []
    assert [task.lease_owner for task in await claim(database, "runner-b", now=later + LEASE_S)] == ["runner-b"]


async def test_retry_puts_the_task_back_for_later_with_its_error(database: Database) -> None:
    """A retried task waits until its run time, then comes back with the error kept and the attempt counted."""
    await enqueue(database, "work")
    [task] = await claim(database)
    assert await database.write(
        lambda tx: tasks.retry(
            tx, task.id, owner="runner-a", attempts=task.attempts, run_at=T0 + 100, error="boom: 503", now=T0 + 1
        )
    )
    assert await claim(database, now=T0 + 99) == []
    [again] = await claim(database, now=T0 + 100)
    assert (again.id, again.attempts, again.last_error, again.interrupted) == (task.id, 2, "boom: 503", False)


@pytest.mark.parametrize("finish", ["defer", "release"])
async def test_defer_and_release_do_not_count_the_attempt(database: Database, finish: str) -> None:
    """A deferred task comes back at its run time, a released one at once, with the attempt not counted."""
    await enqueue(database, "work")
    [task] = await claim(database)
    if finish == "defer":
        done = await database.write(
            lambda tx: tasks.defer(tx, task.id, owner="runner-a", attempts=task.attempts, run_at=T0 + 5, now=T0)
        )
        assert await claim(database, now=T0 + 4) == []
    else:
        done = await database.write(
            lambda tx: tasks.release(tx, task.id, owner="runner-a", attempts=task.attempts, now=T0)
        )
    assert done
    [again] = await claim(database, now=T0 + 5)
    assert (again.id, again.attempts) == (task.id, 1)


async def test_a_killed_task_is_dead(database: Database) -> None:
    """A killed task keeps its error and is never claimed again; killing it twice does nothing."""
    await enqueue(database, "work")
    [task] = await claim(database)
    assert await database.write(
        lambda tx: tasks.kill(tx, task.id, owner="runner-a", attempts=task.attempts, error="gave up", now=T0 + 1)
    )
    assert not await database.write(
        lambda tx: tasks.kill(tx, task.id, owner="runner-a", attempts=task.attempts, error="again", now=T0 + 2)
    )
    assert await claim(database, now=T0 + 10 * LEASE_S) == []


async def test_outcomes_need_the_lease(database: Database) -> None:
    """Nobody but the lease's owner can finish, retry, kill, defer or release a task."""
    await enqueue(database, "work")
    [task] = await claim(database, "runner-a")
    not_mine = [
        lambda tx: tasks.complete(tx, task.id, owner="runner-b", attempts=task.attempts, now=T0),
        lambda tx: tasks.retry(tx, task.id, owner="runner-b", attempts=task.attempts, run_at=T0, error="e", now=T0),
        lambda tx: tasks.kill(tx, task.id, owner="runner-b", attempts=task.attempts, error="e", now=T0),
        lambda tx: tasks.defer(tx, task.id, owner="runner-b", attempts=task.attempts, run_at=T0, now=T0),
        lambda tx: tasks.release(tx, task.id, owner="runner-b", attempts=task.attempts, now=T0),
    ]
    for write in not_mine:
        assert not await database.write(write)
    assert await database.write(
        lambda tx: tasks.complete(tx, task.id, owner="runner-a", attempts=task.attempts, now=T0)
    )


async def test_claims_by_kind(database: Database) -> None:
    """A claim takes only the kinds asked for, or with `exclude` every other kind, and at most `limit`."""
    for kind in ["a", "b", "c", "c"]:
        await enqueue(database, kind)
    assert [task.kind for task in await claim(database, kinds=["c"], exclude=False, limit=1)] == ["c"]
    assert sorted(task.kind for task in await claim(database, kinds=["c"], exclude=True)) == ["a", "b"]
    assert [task.kind for task in await claim(database, kinds=["c"], exclude=False)] == ["c"]


async def test_a_lane_never_holds_more_than_its_share(database: Database) -> None:
    """With `per_lane`, no lane has more leased tasks than that, counting the ones already leased."""
    for n, lane in enumerate(["x", "x", "x", "y"]):
        await enqueue(database, "deliver", lane=lane, payload={"lane": lane, "n": n})
    first = await claim(database, kinds=["deliver"], exclude=False, per_lane=2, limit=1)
    assert [task.payload for task in first] == [{"lane": "x", "n": 0}]
    rest = await claim(database, kinds=["deliver"], exclude=False, per_lane=2)
    assert [task.payload for task in rest] == [{"lane": "x", "n": 1}, {"lane": "y", "n": 3}]
    assert await claim(database, kinds=["deliver"], exclude=False, per_lane=2) == []
    assert await database.write(
        lambda tx: tasks.complete(tx, first[0].id, owner="runner-a", attempts=first[0].attempts, now=T0)
    )
    assert [task.payload for task in await claim(database, kinds=["deliver"], exclude=False, per_lane=2)] == [
        {"lane": "x", "n": 2}
    ]


async def test_next_run_at_is_the_earliest_waiting_task(database: Database) -> None:
    """The earliest run time of a waiting task; None when nothing waits."""
    assert await tasks.next_run_at(database) is None
    await enqueue(database, "later", delay_s=50)
    await enqueue(database, "sooner", delay_s=20)
    assert await tasks.next_run_at(database) == T0 + 20


async def test_deliver_tasks_are_queued_once_per_delivery_in_its_lane(database: Database) -> None:
    """`queue_deliver` adds one due `deliver` task per delivery in its lane, in one statement; a delivery
    whose task is still live keeps that one."""
    await database.write(lambda tx: tasks.queue_deliver(tx, [("dlv_1", "lane_a")], now=T0))
    queued = [("dlv_1", "lane_a"), ("dlv_2", "lane_b"), ("dlv_3", "lane_a")]
    await database.write(lambda tx: tasks.queue_deliver(tx, queued, now=T0))

    async def one_per_lane() -> list[Task]:
        return await claim(database, kinds=["deliver"], exclude=False, per_lane=1)

    first = await one_per_lane()
    assert sorted((task.kind, task.job_id, task.payload["delivery_id"]) for task in first) == [
        ("deliver", None, "dlv_1"),
        ("deliver", None, "dlv_2"),
    ]
    assert await one_per_lane() == []  # dlv_3 waits behind dlv_1 in lane_a
    [dlv_1] = [task for task in first if task.payload["delivery_id"] == "dlv_1"]
    assert await database.write(
        lambda tx: tasks.complete(tx, dlv_1.id, owner="runner-a", attempts=dlv_1.attempts, now=T0)
    )
    assert [task.payload for task in await one_per_lane()] == [{"delivery_id": "dlv_3"}]


async def test_hurry_deliver_makes_waiting_deliver_tasks_due_now(database: Database) -> None:
    """`hurry_deliver` moves the waiting `deliver` tasks of the deliveries named to now, and no others."""
    for delivery_id in ("dlv_1", "dlv_2"):
        await enqueue(database, "deliver", payload={"delivery_id": delivery_id}, lane="lane_a", delay_s=3600)
    await database.write(lambda tx: tasks.hurry_deliver(tx, ["dlv_2", "dlv_9"], now=T0 + 2))
    assert await tasks.next_run_at(database) == T0 + 2
    assert [task.payload for task in await claim(database, now=T0 + 2)] == [{"delivery_id": "dlv_2"}]


async def test_a_held_lane_waits_until_released(database: Database) -> None:
    """`hold_lane` parks a lane's waiting tasks of a kind until a time; `release_lane` makes them due now."""
    await enqueue(database, "deliver", payload={"delivery_id": "a"}, lane="sub_1")
    await enqueue(database, "deliver", payload={"delivery_id": "b"}, lane="other", delay_s=5)
    await database.write(
        lambda tx: tasks.hold_lane(tx, "sub_1", kind="deliver", until=T0 + 60, held_until=None, now=T0)
    )
    assert await tasks.next_run_at(database) == T0 + 5  # only the other lane's task is due soon
    await database.write(
        lambda tx: tasks.hold_lane(tx, "other", kind="deliver", until=T0 + 90, held_until=None, now=T0)
    )
    assert await tasks.next_run_at(database) == T0 + 60
    await database.write(lambda tx: tasks.release_lane(tx, "sub_1", kind="deliver", until=T0 + 60, now=T0 + 1))
    assert await tasks.next_run_at(database) == T0 + 1
