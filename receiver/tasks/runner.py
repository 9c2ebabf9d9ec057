"""The task runner: claims outbox tasks with a lease, runs their handlers, retries, dead-letters."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from receiver.errors import DeferredError, GiveUpError, RetryLaterError
from receiver.models import Task
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
    """

    def __init__(
        self,
        outbox: Outbox,
        kinds: dict[str, TaskKind],
        *,
        clock: Clock,
        concurrency: int = 8,
        pools: Sequence[Pool] = (),
        lease_s: float = 120.0,
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
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_exited: asyncio.Event | None = None  # set while `run()` is not looping
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

    async def run_once(self) -> int:
        """Claim every due task (up to each pool's slots), run them all, and return how many ran."""
        claimed = await self._claim([(pool, self._free(pool)) for pool in self.pools])
        tasks = [task for pool_tasks in claimed for task in pool_tasks]
        await asyncio.gather(*(self._execute(task) for task in tasks))
        return len(tasks)

    async def run(self) -> None:
        self._loop_exited = asyncio.Event()
        try:
            await self._loop()
        finally:
            self._loop_exited.set()

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
        """Stop claiming; let in-flight tasks finish within the grace period. Unfinished tasks keep
        their lease and are taken over once it expires (marked interrupted)."""
        self._stopping = True
        self._wake.set()
        if self._loop_exited is not None:
            # Let a claim in flight finish (and be handed back) so that nothing starts after we return.
            await self._loop_exited.wait()
        inflight = set().union(*self._inflight.values())
        if inflight:
            _, pending = await asyncio.wait(inflight, timeout=self.shutdown_grace_s)
            for running in pending:
                running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)

    async def _execute(self, task: Task) -> None:
        kind = self.kinds.get(task.kind)
        if kind is None:
            await self.outbox.kill_task(task, owner=self.owner, error=f"no handler for {task.kind!r}", now=self.clock())
            return
        heartbeat = asyncio.create_task(self._heartbeat(task))
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
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

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

    async def _heartbeat(self, task: Task) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.outbox.extend_lease(task, owner=self.owner, lease_s=self.lease_s, now=self.clock())
            except Exception:  # a missed beat only risks a takeover; it must not fail the task itself
                log.exception("extending the lease of task %s %s failed", task.kind, task.id)


def _name(pool: Pool | None) -> str:
    return "" if pool is None else pool.name
