"""The task runner over a real SQLite outbox: outcomes, retries, dead letters, lease takeover, run/stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from receiver.errors import GiveUpError, RetryLaterError
from receiver.models import Task
from receiver.storage.base import StorageError
from receiver.storage.sqlite import Database
from receiver.tasks.lanes import Pool
from receiver.tasks.queue import Outbox
from receiver.tasks.retry import RetryPolicy
from receiver.tasks.runner import TaskContext, TaskKind, TaskRunner
from receiver.wiring import task_pools
from tests.helpers.clock import Clock
from tests.helpers.database import read_rows
from tests.helpers.stack import make_settings
from tests.helpers.waiting import until

T0 = 1_760_000_000.0
HANG_GUARD_S = 10  # only stops a broken runner from hanging the suite; no test relies on timing


@pytest.fixture
def outbox(db: Database) -> Outbox:
    return Outbox(db)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


class Recorder:
    """A handler that records each call and then does what it is told (return, or raise)."""

    def __init__(self, outcome: BaseException | None = None) -> None:
        self.outcome = outcome
        self.calls: list[tuple[Task, TaskContext]] = []
        self.called = asyncio.Event()

    async def __call__(self, task: Task, context: TaskContext) -> None:
        self.calls.append((task, context))
        self.called.set()
        if self.outcome is not None:
            raise self.outcome


class DeadLetters:
    """An `on_dead` hook that records what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    async def __call__(self, task: Task, error: str) -> None:
        self.calls.append((task.id, error))


def make_runner(outbox: Outbox, kinds: dict[str, TaskKind], clock: Clock, **options: Any) -> TaskRunner:
    options.setdefault("poll_interval_s", 3600.0)  # so an idle runner only moves when woken
    return TaskRunner(outbox, kinds, clock=clock, **options)


async def task_rows(db: Database) -> list[dict[str, Any]]:
    return [dict(row) for row in await read_rows(db.path, "SELECT * FROM tasks ORDER BY id")]


async def only_row(db: Database) -> dict[str, Any]:
    rows = await task_rows(db)
    assert len(rows) == 1
    return rows[0]


# --- outcomes of one run ------------------------------------------------------------------------


async def test_successful_handler_marks_task_done(db: Database, outbox: Outbox, clock: Clock) -> None:
    """A handler that returns marks its task done; it got the task's payload and the runner's owner."""
    handler = Recorder()
    runner = make_runner(outbox, {"work": TaskKind(handler)}, clock)
    await outbox.enqueue("work", None, payload={"n": 7}, now=clock())
    assert await runner.run_once() == 1
    [(task, context)] = handler.calls
    assert (task.kind, task.job_id, task.payload, task.attempts, task.interrupted) == ("work", None, {"n": 7}, 1, False)
    assert context.owner == runner.owner
    row = await only_row(db)
    assert (row["status"], row["attempts"], row["lease_owner"], row["last_error"]) == ("done", 1, None, None)
    assert await runner.run_once() == 0


async def test_retry_later_error_reschedules_after_retry_after(db: Database, outbox: Outbox, clock: Clock) -> None:
    """RetryLaterError puts the task back as pending, no sooner than its retry_after_s, keeping the error."""
    handler = Recorder(RetryLaterError("provider busy", retry_after_s=120.0, code="provider_busy"))
    runner = make_runner(outbox, {"work": TaskKind(handler)}, clock)
    await outbox.enqueue("work", None, now=clock())
    assert await runner.run_once() == 1
    row = await only_row(db)
    assert row["status"] == "pending"
    assert row["run_at"] >= T0 + 120.0
    assert row["last_error"] == "provider_busy: provider busy"
    assert (row["attempts"], row["lease_owner"]) == (1, None)
    clock.advance(119)
    assert await runner.run_once() == 0  # not due yet
    clock.advance(row["run_at"] - clock())
    assert await runner.run_once() == 1
    assert handler.calls[-1][0].attempts == 2


async def test_plain_exception_retries_per_policy(db: Database, outbox: Outbox, clock: Clock) -> None:
    """An unexpected exception is retried after a jittered delay within the kind's policy bounds."""
    policy = RetryPolicy(max_attempts=5, base_s=10.0, max_s=1000.0)
    runner = make_runner(outbox, {"work": TaskKind(Recorder(ValueError("nope")), policy=policy)}, clock)
    await outbox.enqueue("work", None, now=clock())
    for attempt, ceiling in [(1, 10.0), (2, 20.0), (3, 40.0)]:
        now = clock()
        assert await runner.run_once() == 1
        row = await only_row(db)
        assert (row["status"], row["attempts"], row["last_error"]) == ("pending", attempt, "ValueError: nope")
        assert now <= row["run_at"] <= now + ceiling
        clock.advance(ceiling)


@pytest.mark.parametrize(
    "error",
    [ValueError("nope"), RetryLaterError("still busy", retry_after_s=5.0)],
    ids=["exception", "retry_later"],
)
async def test_task_dies_after_max_attempts(db: Database, outbox: Outbox, clock: Clock, error: Exception) -> None:
    """After `max_attempts` failures the task is dead and `on_dead` runs exactly once with the last error."""
    dead = DeadLetters()
    policy = RetryPolicy(max_attempts=3, base_s=1.0, max_s=10.0)
    handler = Recorder(error)
    runner = make_runner(outbox, {"work": TaskKind(handler, policy=policy, on_dead=dead)}, clock)
    await outbox.enqueue("work", None, now=clock())
    for _ in range(3):
        assert await runner.run_once() == 1
        clock.advance(10)
    row = await only_row(db)
    assert (row["status"], row["attempts"]) == ("dead", 3)
    assert row["last_error"].startswith("gave up after 3 attempts; last error: ")
    assert dead.calls == [(row["id"], row["last_error"])]
    clock.advance(3600)
    assert await runner.run_once() == 0
    assert len(handler.calls) == 3
    assert len(dead.calls) == 1


async def test_give_up_error_is_dead_at_once(db: Database, outbox: Outbox, clock: Clock) -> None:
    """GiveUpError dead-letters the task on its first attempt, whatever retry budget is left."""
    dead = DeadLetters()
    handler = Recorder(GiveUpError("model refused the input", code="provider_rejected"))
    runner = make_runner(outbox, {"work": TaskKind(handler, on_dead=dead)}, clock)
    await outbox.enqueue("work", None, now=clock())
    assert await runner.run_once() == 1
    row = await only_row(db)
    assert (row["status"], row["attempts"]) == ("dead", 1)
    assert row["last_error"] == "provider_rejected: model refused the input"
    assert dead.calls == [(row["id"], "provider_rejected: model refused the input")]


async def test_unknown_kind_is_dead(db: Database, outbox: Outbox, clock: Clock) -> None:
    """A task of a kind the runner has no handler for is dead-lettered, not retried forever."""
    runner = make_runner(outbox, {"work": TaskKind(Recorder())}, clock)
    await outbox.enqueue("mystery", None, now=clock())
    assert await runner.run_once() == 1
    row = await only_row(db)
    assert (row["status"], row["last_error"]) == ("dead", "no handler for 'mystery'")


# --- claiming -----------------------------------------------------------------------------------


async def test_run_once_returns_number_run_up_to_concurrency(db: Database, outbox: Outbox, clock: Clock) -> None:
    """`run_once` runs at most `concurrency` due tasks and returns how many it ran."""
    handler = Recorder()
    runner = make_runner(outbox, {"work": TaskKind(handler)}, clock, concurrency=2)
    for _ in range(3):
        await outbox.enqueue("work", None, now=clock())
    assert [await runner.run_once() for _ in range(3)] == [2, 1, 0]
    assert [row["status"] for row in await task_rows(db)] == ["done"] * 3
    assert sorted(task.id for task, _ in handler.calls) == [row["id"] for row in await task_rows(db)]


async def test_expired_lease_is_taken_over_as_interrupted(db: Database, outbox: Outbox, clock: Clock) -> None:
    """A task leased by a runner that vanished is claimed again once its lease expires, marked interrupted."""
    handler = Recorder()
    runner = make_runner(outbox, {"work": TaskKind(handler)}, clock)
    await outbox.enqueue("work", None, now=clock())
    [stolen] = await outbox.claim_tasks(owner="crashed-runner", limit=10, lease_s=60.0, now=clock())
    assert stolen.interrupted is False
    clock.advance(59)
    assert await runner.run_once() == 0  # the lease still holds
    row = await only_row(db)
    assert (row["status"], row["lease_owner"]) == ("leased", "crashed-runner")
    clock.advance(1)
    assert await runner.run_once() == 1
    [(task, _)] = handler.calls
    assert (task.id, task.interrupted, task.attempts, task.lease_owner) == (stolen.id, True, 2, runner.owner)
    assert (await only_row(db))["status"] == "done"


async def test_late_result_from_the_old_owner_is_ignored(db: Database, outbox: Outbox, clock: Clock) -> None:
    """Once a task was taken over, the previous owner can no longer complete or kill it."""
    await outbox.enqueue("work", None, now=clock())
    [old] = await outbox.claim_tasks(owner="old", limit=1, lease_s=60.0, now=clock())
    clock.advance(60)
    [new] = await outbox.claim_tasks(owner="new", limit=1, lease_s=60.0, now=clock())
    assert await outbox.complete_task(old, owner="old", now=clock()) is False
    assert await outbox.kill_task(old, owner="old", error="late", now=clock()) is False
    assert (await only_row(db))["lease_owner"] == "new"
    assert await outbox.complete_task(new, owner="new", now=clock()) is True


# --- the heartbeat ------------------------------------------------------------------------------


class LeaseSpy(Outbox):
    """The real outbox, noting each lease extension; `fail_extend` makes extensions raise."""

    def __init__(self, db: Database, *, fail_extend: bool) -> None:
        super().__init__(db)
        self.fail_extend = fail_extend
        self.extended = asyncio.Event()

    async def extend_leases(self, task_ids: Iterable[int], *, owner: str, lease_s: float, now: float) -> int:
        if self.fail_extend:
            self.extended.set()
            raise StorageError("database is locked")
        extended = await super().extend_leases(task_ids, owner=owner, lease_s=lease_s, now=now)
        self.extended.set()
        return extended


@pytest.mark.parametrize("fail_extend", [False, True], ids=["extends", "extension_fails"])
async def test_long_task_keeps_its_lease(db: Database, clock: Clock, fail_extend: bool) -> None:
    """A running task's lease is extended while its handler works; a failed extension does not fail the task."""
    spy = LeaseSpy(db, fail_extend=fail_extend)
    seen: list[float] = []

    async def slow(task: Task, context: TaskContext) -> None:
        clock.advance(1000)
        await spy.extended.wait()
        [row] = await read_rows(db.path, "SELECT lease_expires_at FROM tasks WHERE id = ?", task.id)
        seen.append(row[0])

    runner = make_runner(spy, {"work": TaskKind(slow)}, clock, lease_s=0.03)
    await spy.enqueue("work", None, now=clock())
    async with asyncio.timeout(HANG_GUARD_S):
        assert await runner.run_once() == 1
    if fail_extend:
        assert seen == [T0 + 0.03]
    else:
        assert seen[0] >= T0 + 1000  # extended from the (moved) clock
    assert (await only_row(db))["status"] == "done"


# --- run() and stop() ---------------------------------------------------------------------------


class ClaimHook(Outbox):
    """The real outbox; starts `during_claim` once, on the first claim, while that claim is in flight.

    With `finish_hook_first` the claim returns only after the hook finished; otherwise the hook task is
    left running (kept in `hook_task`).
    """

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.during_claim: Callable[[], Awaitable[None]] | None = None
        self.finish_hook_first = True
        self.hook_task: asyncio.Task[None] | None = None
        self.claimed = asyncio.Event()

    async def claim_pools(
        self, *, owner: str, wants: Sequence[tuple[Pool | None, int]], others: Iterable[str], lease_s: float, now: float
    ) -> list[list[Task]]:
        hook, self.during_claim = self.during_claim, None
        if hook is not None:
            self.hook_task = asyncio.create_task(run_hook(hook))
        tasks = await super().claim_pools(owner=owner, wants=wants, others=others, lease_s=lease_s, now=now)
        if self.hook_task is not None and self.finish_hook_first:
            await self.hook_task
        self.claimed.set()
        return tasks


async def run_hook(hook: Callable[[], Awaitable[None]]) -> None:
    await hook()


async def test_run_processes_task_enqueued_after_start(db: Database, clock: Clock) -> None:
    """A running runner picks up a task committed after it went idle, as soon as it is woken."""
    outbox = ClaimHook(db)
    handler = Recorder()
    runner = make_runner(outbox, {"work": TaskKind(handler)}, clock)
    async with asyncio.timeout(HANG_GUARD_S):
        running = asyncio.create_task(runner.run())
        await outbox.claimed.wait()  # the first claim found nothing
        await outbox.enqueue("work", None, now=clock())
        runner.wake()
        await handler.called.wait()
        await runner.stop()
        await running
    assert (await only_row(db))["status"] == "done"


async def test_wake_during_claim_is_not_lost(db: Database, clock: Clock) -> None:
    """A wake-up that arrives while a claim is in flight makes the runner claim again at once."""
    outbox = ClaimHook(db)
    handler = Recorder()
    runner = make_runner(outbox, {"work": TaskKind(handler)}, clock)

    async def commit_and_wake() -> None:  # committed after the in-flight claim looked for due tasks
        await outbox.enqueue("work", None, now=clock())
        runner.wake()

    outbox.during_claim = commit_and_wake
    async with asyncio.timeout(HANG_GUARD_S):
        running = asyncio.create_task(runner.run())
        await handler.called.wait()
        await runner.stop()
        await running
    assert (await only_row(db))["status"] == "done"


async def test_stop_during_claim_hands_tasks_back(db: Database, clock: Clock) -> None:
    """Tasks claimed while `stop()` was called are released unstarted, with their attempt not counted."""
    outbox = ClaimHook(db)
    handler = Recorder()
    runner = make_runner(outbox, {"work": TaskKind(handler)}, clock)
    await outbox.enqueue("work", None, now=clock())
    outbox.during_claim = runner.stop
    outbox.finish_hook_first = False  # stop() waits for run() to end, so the claim cannot wait for it
    async with asyncio.timeout(HANG_GUARD_S):
        await runner.run()
        assert outbox.hook_task is not None
        await outbox.hook_task
    assert handler.calls == []
    row = await only_row(db)
    assert (row["status"], row["attempts"], row["lease_owner"]) == ("pending", 0, None)


async def test_stop_on_idle_runner_returns(db: Database, outbox: Outbox, clock: Clock) -> None:
    """`stop()` on an idle runner (asleep for its hour-long poll interval) returns and ends `run()`."""
    runner = make_runner(outbox, {}, clock)
    async with asyncio.timeout(HANG_GUARD_S):
        running = asyncio.create_task(runner.run())
        await runner.stop()
        await running
    assert running.result() is None
    await runner.stop()  # a second stop is harmless


async def test_stop_waits_for_in_flight_task(db: Database, clock: Clock) -> None:
    """`stop()` lets a task already running finish and record its outcome; meanwhile the runner stays alive
    (nobody takes its task over), and `run()` returns once that is done."""
    outbox = ClaimHook(db)
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(task: Task, context: TaskContext) -> None:
        started.set()
        await release.wait()

    runner = make_runner(outbox, {"work": TaskKind(slow)}, clock)
    await outbox.enqueue("work", None, now=clock())
    async with asyncio.timeout(HANG_GUARD_S):
        running = asyncio.create_task(runner.run())
        await started.wait()
        stopping = asyncio.create_task(runner.stop())
        await until(lambda: runner._loop_exited is not None and runner._loop_exited.is_set(), what="loop ended")
        assert not stopping.done() and not running.done()  # the task is still in flight
        assert await db.dead_owners({runner.owner}) == set()
        release.set()
        await stopping
        await running
    assert (await only_row(db))["status"] == "done"
    assert await db.dead_owners({runner.owner}) == {runner.owner}


async def test_stop_after_grace_leaves_task_leased(db: Database, outbox: Outbox, clock: Clock) -> None:
    """A task still running when the grace period ends is cancelled and keeps its lease (for a later takeover)."""
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck(task: Task, context: TaskContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runner = make_runner(outbox, {"work": TaskKind(stuck)}, clock, shutdown_grace_s=0.0)
    await outbox.enqueue("work", None, now=clock())
    async with asyncio.timeout(HANG_GUARD_S):
        running = asyncio.create_task(runner.run())
        await started.wait()
        await runner.stop()
        await running
    assert cancelled.is_set()
    row = await only_row(db)
    assert (row["status"], row["lease_owner"]) == ("leased", runner.owner)


# --- pools and lanes ----------------------------------------------------------------------------


async def test_full_lane_does_not_block_other_lanes(db: Database, outbox: Outbox, clock: Clock) -> None:
    """A pool's claim takes at most `per_lane` tasks of one lane, and still takes the other lanes' tasks."""
    pool = Pool("deliver", frozenset({"deliver"}), concurrency=10, per_lane=2)
    for _ in range(5):
        await outbox.enqueue("deliver", None, now=clock(), lane="slow")
    await outbox.enqueue("deliver", None, now=clock() + 1, lane="fast")
    clock.advance(1)
    claimed = await outbox.claim_tasks(owner="a", limit=10, lease_s=60, now=clock(), pool=pool)
    lanes = sorted(row["lane"] for row in await task_rows(db) if row["id"] in {task.id for task in claimed})
    assert lanes == ["fast", "slow", "slow"]


async def test_lane_cap_counts_every_runner(db: Database, outbox: Outbox, clock: Clock) -> None:
    """A lane's leased tasks count against its cap whoever holds them; a finished one frees its place."""
    pool = Pool("provider", frozenset({"submit"}), concurrency=10, per_lane=2)
    for _ in range(3):
        await outbox.enqueue("submit", None, now=clock(), lane="fal")
    first = await outbox.claim_tasks(owner="a", limit=10, lease_s=60, now=clock(), pool=pool)
    assert len(first) == 2
    assert await outbox.claim_tasks(owner="b", limit=10, lease_s=60, now=clock(), pool=pool) == []
    assert await outbox.complete_task(first[0], owner="a", now=clock())
    assert len(await outbox.claim_tasks(owner="b", limit=10, lease_s=60, now=clock(), pool=pool)) == 1


async def test_pools_have_their_own_slots(db: Database, outbox: Outbox, clock: Clock) -> None:
    """Tasks of a pool whose handlers hang hold only that pool's slots: other kinds still run."""
    release = asyncio.Event()
    hanging = Recorder()

    async def hang(task: Task, context: TaskContext) -> None:
        await hanging(task, context)
        await release.wait()

    other = Recorder()
    pool = Pool("deliver", frozenset({"deliver"}), concurrency=2, per_lane=2)
    kinds = {"deliver": TaskKind(hang), "work": TaskKind(other)}
    runner = make_runner(outbox, kinds, clock, concurrency=1, pools=[pool])
    for _ in range(4):
        await outbox.enqueue("deliver", None, now=clock(), lane="black-hole")
    await outbox.enqueue("work", None, now=clock())
    async with asyncio.timeout(HANG_GUARD_S):
        running = asyncio.create_task(runner.run())
        await other.called.wait()
        assert len(hanging.calls) <= 2
        release.set()
        await runner.stop()
        await running
    assert len(other.calls) == 1
    statuses = [row["status"] for row in await task_rows(db)]
    assert statuses.count("leased") == 0 and statuses[-1] == "done"


async def test_unpooled_kinds_share_the_default_slots(db: Database, outbox: Outbox, clock: Clock) -> None:
    """The runner's own slots take every kind no pool owns (unknown kinds too, which are dead-lettered)."""
    pool = Pool("deliver", frozenset({"deliver"}), concurrency=1, per_lane=1)
    runner = make_runner(outbox, {"work": TaskKind(Recorder())}, clock, concurrency=4, pools=[pool])
    await outbox.enqueue("work", None, now=clock())
    await outbox.enqueue("mystery", None, now=clock())
    await outbox.enqueue("deliver", None, now=clock(), lane="x")
    await outbox.enqueue("deliver", None, now=clock(), lane="x")
    assert await runner.run_once() == 3  # both default-pool tasks and one delivery (its pool has one slot)
    assert [row["status"] for row in await task_rows(db)] == ["done", "dead", "dead", "pending"]


async def test_hanging_image_copies_leave_the_event_fan_out_running(
    db: Database, outbox: Outbox, clock: Clock, tmp_path: Path
) -> None:
    """With the service's own pools, image copies that hang hold only the image slots: the event
    fan-out (the default pool) still runs."""
    release = asyncio.Event()
    hanging = Recorder()

    async def fetch(task: Task, context: TaskContext) -> None:
        await hanging(task, context)
        await release.wait()

    fanned_out = Recorder()
    settings = make_settings(tmp_path, task_concurrency=4)
    kinds = {"fetch_images": TaskKind(fetch), "notify": TaskKind(fanned_out)}
    runner = make_runner(outbox, kinds, clock, concurrency=4, pools=task_pools(settings, providers=4))
    for _ in range(6):
        await outbox.enqueue("fetch_images", None, now=clock(), lane="fal")
    await outbox.enqueue("notify", None, now=clock() + 1, lane="fal")
    clock.advance(1)
    async with asyncio.timeout(HANG_GUARD_S):
        running = asyncio.create_task(runner.run())
        await fanned_out.called.wait()
        assert len(hanging.calls) == 4  # every image slot, and no more
        release.set()
        await runner.stop()
        await running
