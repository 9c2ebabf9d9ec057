"""The task runner: claims outbox tasks with a lease, runs their handlers, retries, dead-letters."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from receiver.errors import DeferredError, GiveUpError, RetryLaterError
from receiver.models import Task
from receiver.observability import logs
from receiver.tasks.lanes import Pool
from receiver.tasks.queue import Outbox
from receiver.tasks.retry import RetryPolicy

log = logging.getLogger(__name__)
Clock = Callable[[], float]


@dataclass(slots=True)
class TaskContext:
    """Handed to a handler: who holds the lease (to finish the task inside the handler's own write). A
    handler whose own committed write finished the task sets `finished`: the runner then has nothing to
    write for it."""

    owner: str
    finished: bool = False


Handler = Callable[[Task, TaskContext], Awaitable[None]]
DeadHook = Callable[[Task, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TaskKind:
    handler: Handler
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    on_dead: DeadHook | None = None  # runs once when the task is dead-lettered


class TaskRunner:
    """Runs due tasks. `run()` until `stop()`; tests drive it with `run_once()`.

    `concurrency` slots serve every kind no pool in `pools` owns; each pool has slots of its own (and
    maybe a per-lane cap), so a provider or a delivery target that hangs cannot take the slots that
    other work needs (see `receiver.tasks.lanes`).

    Leases: a claimed task is leased for `lease_s`; one heartbeat every `lease_s / 3` extends the leases
    of every task this runner is running (one statement, however many), so a runner that stalls or dies
    loses its tasks to the others within `lease_s`. A runner that died is found sooner: `run()` marks its owner
    alive for its length (`Database.alive`), and at start and every heartbeat it puts back at once the
    tasks of owners known dead (`Database.dead_owners`), marked interrupted.
    """

    def __init__(
        self,
        outbox: Outbox,
        kinds: dict[str, TaskKind],
        *,
        clock: Clock,
        concurrency: int = 8,
        pools: Sequence[Pool] = (),
        lease_s: float = 15.0,
        poll_interval_s: float = 1.0,
        shutdown_grace_s: float = 30.0,
        claim_delay_s: float = 0.01,
    ) -> None:
        self.outbox = outbox
        self.kinds = kinds
        self.clock = clock
        self.concurrency = concurrency
        self.pools: list[Pool | None] = [None, *pools]  # None: every kind the named pools do not own
        self.pooled_kinds = frozenset().union(*(pool.kinds for pool in pools))
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.shutdown_grace_s = shutdown_grace_s
        self.claim_delay_s = claim_delay_s
        # Unique per runner ever started: a restarted container may get the same pid (and the same id()),
        # and a new runner must never mistake a dead one's leases for its own (its heartbeat would keep them).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_exited: asyncio.Event | None = None  # set while `run()` is not looping
        self._drained = asyncio.Event()  # `stop()` is done with the in-flight tasks
        self._running: set[int] = set()  # ids of the tasks whose handler or outcome is in progress here
        self._inflight: dict[str, set[asyncio.Task[None]]] = {_name(pool): set() for pool in self.pools}

    def wake(self) -> None:
        """Tell an idle runner that new tasks were committed."""
        self._wake.set()

    def _free(self, pool: Pool | None) -> int:
        capacity = self.concurrency if pool is None else pool.concurrency
        return capacity - len(self._inflight[_name(pool)])

    async def _claim(self, wants: list[tuple[Pool | None, int]]) -> list[list[Task]]:
        return await self.outbox.claim_pools(
            owner=self.owner, wants=wants, others=self.pooled_kinds, lease_s=self.lease_s, now=self.clock()
        )

    @property
    def heartbeat_s(self) -> float:
        return self.lease_s / 3

    async def run_once(self) -> int:
        """Claim every due task (up to each pool's slots), run them all (their leases kept up by the
        heartbeat), and return how many ran."""
        claimed = await self._claim([(pool, self._free(pool)) for pool in self.pools])
        tasks = [task for pool_tasks in claimed for task in pool_tasks]
        keeper = asyncio.create_task(self._keep_leases(take_over=False))
        try:
            await asyncio.gather(*(self._execute(task) for task in tasks))
        finally:
            await _cancelled(keeper)
        return len(tasks)

    async def run(self) -> None:
        """Claim and run tasks until `stop()`, marked alive, with the heartbeat and the takeover of dead
        runners' tasks beside; returns once `stop()` is done with the tasks in flight."""
        self._loop_exited = asyncio.Event()
        async with self.outbox.alive(self.owner):
            keeper = asyncio.create_task(self._keep_leases(take_over=True), name="task-leases")
            try:
                try:
                    await self._loop()
                finally:
                    self._loop_exited.set()
                # Still alive and beating while `stop()` lets the tasks in flight finish: nobody may take
                # them over before they end.
                await self._drained.wait()
            finally:
                await _cancelled(keeper)

    async def _loop(self) -> None:
        while not self._stopping:
            # Clear before claiming, not after: a wake-up that arrives while the claim is in flight (a
            # task committed after the claim looked) must not be lost until the next poll interval.
            self._wake.clear()
            if self.claim_delay_s:
                # Let tasks committed in the next few ms join this claim: under load one claim
                # transaction then takes many tasks instead of one per wake-up.
                await asyncio.sleep(self.claim_delay_s)
            wants = [(pool, self._free(pool)) for pool in self.pools]
            claimed: list[list[Task]] = [[] for _ in wants]
            if any(free > 0 for _, free in wants):
                try:
                    claimed = await self._claim(wants)
                except Exception:
                    log.exception("claiming tasks failed; retrying shortly")
            if self._stopping:  # stop() came while we were claiming: hand the tasks back unstarted
                for task in (task for pool_tasks in claimed for task in pool_tasks):
                    await self.outbox.release_task(task, owner=self.owner, now=self.clock())
                return
            more = False
            for (pool, free), pool_tasks in zip(wants, claimed, strict=True):
                inflight = self._inflight[_name(pool)]
                for task in pool_tasks:
                    running = asyncio.create_task(self._execute(task), name=f"task-{task.kind}-{task.id}")
                    inflight.add(running)
                    running.add_done_callback(functools.partial(self._done, inflight))
                more = more or (bool(pool_tasks) and len(pool_tasks) == free)
            if more:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)

    def _done(self, inflight: set[asyncio.Task[None]], running: asyncio.Task[None]) -> None:
        inflight.discard(running)
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming; let in-flight tasks finish within the grace period. Unfinished ones are
        cancelled mid-handler: once `run()` has returned (its owner no longer alive) other runners take
        them over at once, marked interrupted."""
        self._stopping = True
        self._wake.set()
        if self._loop_exited is not None:
            # Let a claim in flight finish (and be handed back) so that nothing starts after we return.
            await self._loop_exited.wait()
        try:
            inflight = set().union(*self._inflight.values())
            if inflight:
                _, pending = await asyncio.wait(inflight, timeout=self.shutdown_grace_s)
                for running in pending:
                    running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self._drained.set()

    async def _execute(self, task: Task) -> None:
        logs.bind(task_kind=task.kind, task_id=task.id, job_id=task.job_id)  # this task's own asyncio task
        kind = self.kinds.get(task.kind)
        if kind is None:
            await self.outbox.kill_task(task, owner=self.owner, error=f"no handler for {task.kind!r}", now=self.clock())
            return
        self._running.add(task.id)
        try:
            await self._run_handler(task, kind)
        finally:
            self._running.discard(task.id)

    async def _run_handler(self, task: Task, kind: TaskKind) -> None:
        context = TaskContext(self.owner)
        try:
            await kind.handler(task, context)
        except DeferredError as exc:
            now = self.clock()
            await self.outbox.defer_task(task, owner=self.owner, run_at=now + (exc.retry_after_s or 1.0), now=now)
        except RetryLaterError as exc:
            await self._retry_or_kill(task, kind, f"{exc.code}: {exc.message}", exc.retry_after_s)
        except GiveUpError as exc:
            await self._kill(task, kind, f"{exc.code}: {exc.message}")
        except Exception as exc:
            log.exception("task %s %s failed", task.kind, task.id)
            await self._retry_or_kill(task, kind, f"{type(exc).__name__}: {exc}", None)
        else:
            if not context.finished:
                await self.outbox.complete_task(task, owner=self.owner, now=self.clock())

    async def _retry_or_kill(self, task: Task, kind: TaskKind, error: str, retry_after_s: float | None) -> None:
        delay = kind.policy.next_delay(task.attempts, retry_after_s=retry_after_s)
        if delay is None:
            await self._kill(task, kind, f"gave up after {task.attempts} attempts; last error: {error}")
            return
        log.info("task %s %s attempt %d failed (%s); retry in %.1f s", task.kind, task.id, task.attempts, error, delay)
        now = self.clock()
        await self.outbox.retry_task(task, owner=self.owner, run_at=now + delay, error=error, now=now)

    async def _kill(self, task: Task, kind: TaskKind, error: str) -> None:
        log.warning("task %s %s is dead: %s", task.kind, task.id, error)
        if await self.outbox.kill_task(task, owner=self.owner, error=error, now=self.clock()) and kind.on_dead:
            await kind.on_dead(task, error)

    async def _keep_leases(self, *, take_over: bool) -> None:
        """The heartbeat: every `heartbeat_s`, extend the leases of the tasks this runner is running; with
        `take_over`, first and then every beat, put back the tasks of runners known dead (and wake up to
        claim them)."""
        while True:
            if take_over:
                try:
                    if await self.outbox.release_dead_owners(besides=self.owner, now=self.clock()):
                        self.wake()
                except Exception:
                    log.exception("taking over the tasks of dead runners failed")
            await asyncio.sleep(self.heartbeat_s)
            if not self._running:
                continue
            try:
                await self.outbox.extend_leases(self._running, owner=self.owner, lease_s=self.lease_s, now=self.clock())
            except Exception:  # a missed beat only risks a takeover; it must not fail the tasks themselves
                log.exception("extending the leases of runner %s failed", self.owner)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _name(pool: Pool | None) -> str:
    return "" if pool is None else pool.name
