"""The runner's leases across runners: it is alive while it runs, takes a dead runner's tasks over at once
(however long their leases), and leaves a live runner's alone."""

from __future__ import annotations

import asyncio

from receiver.models import Task
from receiver.storage.sqlite import Database
from receiver.tasks.queue import Outbox
from receiver.tasks.runner import TaskContext, TaskKind, TaskRunner
from tests.helpers.clock import Clock
from tests.helpers.database import read_rows

T0 = 1_760_000_000.0
LONG_LEASE_S = 600.0  # a takeover within the test can only come from the dead-owner check
HANG_GUARD_S = 10  # only stops a broken runner from hanging the suite; no test relies on timing


class TakeoverSpy(Outbox):
    """The real outbox; `checked` is set after each dead-owner check returns."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.checked = asyncio.Event()

    async def release_dead_owners(self, *, besides: str, now: float) -> int:
        released = await super().release_dead_owners(besides=besides, now=now)
        self.checked.set()
        return released


def make_runner(outbox: Outbox, handler: TaskKind, clock: Clock) -> TaskRunner:
    # Polls and heartbeats an hour apart: only a wake-up or the start-up check moves this runner.
    return TaskRunner(outbox, {"work": handler}, clock=clock, poll_interval_s=3600.0, lease_s=3 * 3600.0)


async def test_a_dead_runners_task_is_taken_over_at_start(db: Database) -> None:
    """A task leased for 600 s by a runner that is not alive runs at once when a runner starts, marked
    interrupted, as attempt 2."""
    clock, outbox = Clock(T0), TakeoverSpy(db)
    await outbox.enqueue("work", None, now=clock())
    [held] = await outbox.claim_tasks(owner="host:1:dead", limit=1, lease_s=LONG_LEASE_S, now=clock())
    ran: list[Task] = []
    done = asyncio.Event()

    async def work(task: Task, context: TaskContext) -> None:
        ran.append(task)
        done.set()

    runner = make_runner(outbox, TaskKind(work), clock)
    running = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            await done.wait()
    finally:
        await runner.stop()
        await running
    [task] = ran
    assert (task.id, task.interrupted, task.attempts, task.lease_owner) == (held.id, True, 2, runner.owner)
    assert clock() == T0  # no lease ran out: the clock never moved


async def test_a_live_runners_task_is_left_alone(db: Database) -> None:
    """A task leased by a runner that is alive (in another `alive` block, as another process) stays its own
    after the new runner's takeover check; and the runner is alive itself while it runs."""
    clock, outbox = Clock(T0), TakeoverSpy(db)
    await outbox.enqueue("work", None, now=clock())

    async def work(task: Task, context: TaskContext) -> None:
        raise AssertionError("a live runner's task ran elsewhere")

    async with db.alive("host:2:live"):
        await outbox.claim_tasks(owner="host:2:live", limit=1, lease_s=LONG_LEASE_S, now=clock())
        runner = make_runner(outbox, TaskKind(work), clock)
        running = asyncio.create_task(runner.run())
        try:
            async with asyncio.timeout(HANG_GUARD_S):
                await outbox.checked.wait()
            assert await db.dead_owners({runner.owner, "host:2:live"}) == set()
        finally:
            await runner.stop()
            await running
    [row] = await read_rows(db.path, "SELECT status, lease_owner FROM tasks")
    assert tuple(row) == ("leased", "host:2:live")
    assert await db.dead_owners({runner.owner}) == {runner.owner}
