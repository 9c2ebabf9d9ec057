"""The storage contract for several worker processes: owners marked alive and found dead, the heartbeat
that extends every lease of one owner, and the takeover of a dead owner's leases."""

from __future__ import annotations

from typing import Any

from receiver.models import Task
from receiver.storage import tasks
from receiver.storage.base import Database
from tests.helpers.storage_rows import T0

LEASE_S = 60.0


async def claim(database: Database, owner: str, *, limit: int = 100, now: float = T0) -> list[Task]:
    def write(tx: Any) -> list[Task]:
        tasks.release_expired_leases(tx, now=now)
        return tasks.claim(
            tx, owner=owner, kinds=(), exclude=True, limit=limit, lease_expires_at=now + LEASE_S, now=now
        )

    return await database.write(write)


async def enqueue(database: Database, count: int) -> None:
    def write(tx: Any) -> None:
        for n in range(count):
            tasks.insert(tx, "work", None, T0, payload={"n": n})

    await database.write(write)


async def test_an_owner_is_alive_only_inside_its_block(database: Database) -> None:
    """An owner never marked alive is dead; inside `alive` it is not; once the block ended it is dead again,
    and a second owner's block is its own."""
    assert await database.dead_owners({"runner-a", "runner-b"}) == {"runner-a", "runner-b"}
    async with database.alive("runner-a"):
        assert await database.dead_owners({"runner-a", "runner-b"}) == {"runner-b"}
        async with database.alive("runner-b"):
            assert await database.dead_owners({"runner-a", "runner-b"}) == set()
        assert await database.dead_owners({"runner-a", "runner-b"}) == {"runner-b"}
    assert await database.dead_owners({"runner-a", "runner-b"}) == {"runner-a", "runner-b"}
    assert await database.dead_owners(set()) == set()


async def test_the_heartbeat_extends_the_leases_of_the_tasks_named_of_its_owner_only(database: Database) -> None:
    """One statement pushes out the leases `runner-a` holds on the tasks it names, not its lease on a task
    it no longer runs, nor another owner's lease on a task named: after the old expiry only those two can
    be taken over."""
    await enqueue(database, 4)
    running = await claim(database, "runner-a", limit=2)
    [abandoned] = await claim(database, "runner-a", limit=1)
    [theirs] = await claim(database, "runner-b")
    later = T0 + LEASE_S - 1
    ids = [task.id for task in running] + [theirs.id]
    extended = await database.write(
        lambda tx: tasks.extend_owner_leases(tx, ids, owner="runner-a", lease_expires_at=later + LEASE_S, now=later)
    )
    assert extended == 2
    taken = await claim(database, "runner-c", now=T0 + LEASE_S)
    assert sorted((task.id, task.interrupted) for task in taken) == sorted([(abandoned.id, True), (theirs.id, True)])
    assert await claim(database, "runner-c", now=later + LEASE_S - 1) == []


async def test_leases_of_dead_owners_go_back_at_once(database: Database) -> None:
    """`leased_owners` names every owner holding a lease; releasing the dead ones puts their tasks back
    before their leases expire, marked interrupted, and leaves the others' alone."""
    await enqueue(database, 3)
    [dead_task] = await claim(database, "dead", limit=1)
    [gone_task] = await claim(database, "gone", limit=1)
    [live_task] = await claim(database, "live", limit=1)
    assert await tasks.leased_owners(database) == {"dead", "gone", "live"}
    released = await database.write(lambda tx: tasks.release_owner_leases(tx, {"dead", "gone"}, now=T0 + 1))
    assert released == 2
    assert await tasks.leased_owners(database) == {"live"}
    again = await claim(database, "next", now=T0 + 1)
    assert sorted((task.id, task.interrupted, task.attempts) for task in again) == [
        (dead_task.id, True, 2),
        (gone_task.id, True, 2),
    ]
    assert all(task.last_error and "lease owner died" in task.last_error for task in again)
    assert live_task.id not in {task.id for task in again}
    assert await database.write(lambda tx: tasks.release_owner_leases(tx, [], now=T0 + 2)) == 0
