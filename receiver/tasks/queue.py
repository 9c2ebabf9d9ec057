"""The outbox: the task table as a leased work queue (claims, outcomes, leases), each call one transaction."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

from receiver.models import Task
from receiver.storage import tasks
from receiver.storage.base import Database, Transaction
from receiver.tasks.lanes import CLAIM_ORDER, STARTING_KINDS, Pool

MAX_ERROR_CHARS = 2000  # of a task's last error kept


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim_tasks(
        self,
        *,
        owner: str,
        limit: int,
        lease_s: float,
        now: float,
        pool: Pool | None = None,
        others: Iterable[str] = (),
    ) -> list[Task]:
        """Lease up to `limit` due tasks (of `pool`'s kinds, or of every kind not in `others`); tasks whose
        lease ran out are first put back in the queue."""
        [claimed] = await self.claim_pools(owner=owner, wants=[(pool, limit)], others=others, lease_s=lease_s, now=now)
        return claimed

    async def claim_pools(
        self, *, owner: str, wants: Sequence[tuple[Pool | None, int]], others: Iterable[str], lease_s: float, now: float
    ) -> list[list[Task]]:
        """For each (pool, limit), lease up to `limit` due tasks of that pool, in one transaction. A pool of
        None takes every kind not in `others` (the kinds the named pools own). Kinds are claimed in
        `receiver.tasks.lanes.CLAIM_ORDER`, and no submit is claimed while a pool (even one with no free slot
        now) leaves other due work behind: work that finishes a job goes before work that starts one."""
        rest = frozenset(others)
        claims = [
            tasks.Want(rest, limit, exclude=True)
            if pool is None
            else tasks.Want(pool.kinds, limit, per_lane=pool.per_lane)
            for pool, limit in wants
        ]

        def write(tx: Transaction) -> list[list[Task]]:
            tasks.release_expired_leases(tx, now=now)
            return tasks.claim_round(
                tx, owner=owner, wants=claims, lease_expires_at=now + lease_s, now=now, order=CLAIM_ORDER,
                starting=STARTING_KINDS,
            )  # fmt: skip

        return await self.db.write(write)

    async def complete_task(self, task: Task, *, owner: str, now: float) -> bool:
        return await self.db.write(lambda tx: tasks.complete(tx, task.id, owner=owner, attempts=task.attempts, now=now))

    async def retry_task(self, task: Task, *, owner: str, run_at: float, error: str, now: float) -> bool:
        error = error[:MAX_ERROR_CHARS]
        return await self.db.write(
            lambda tx: tasks.retry(
                tx, task.id, owner=owner, attempts=task.attempts, run_at=run_at, error=error, now=now
            )
        )

    async def kill_task(self, task: Task, *, owner: str, error: str, now: float) -> bool:
        error = error[:MAX_ERROR_CHARS]
        return await self.db.write(
            lambda tx: tasks.kill(tx, task.id, owner=owner, attempts=task.attempts, error=error, now=now)
        )

    async def defer_task(self, task: Task, *, owner: str, run_at: float, now: float) -> bool:
        """Put a claimed task back for later without counting the attempt (a provider slot is busy)."""
        return await self.db.write(
            lambda tx: tasks.defer(tx, task.id, owner=owner, attempts=task.attempts, run_at=run_at, now=now)
        )

    async def release_task(self, task: Task, *, owner: str, now: float) -> bool:
        """Give a claimed task back untouched (graceful shutdown before it started)."""
        return await self.db.write(lambda tx: tasks.release(tx, task.id, owner=owner, attempts=task.attempts, now=now))

    async def extend_leases(self, task_ids: Iterable[int], *, owner: str, lease_s: float, now: float) -> int:
        """The runner's heartbeat: the leases `owner` holds on `task_ids` run `lease_s` from `now`; how many."""
        expires_at, ids = now + lease_s, list(task_ids)
        return await self.db.write(
            lambda tx: tasks.extend_owner_leases(tx, ids, owner=owner, lease_expires_at=expires_at, now=now)
        )

    async def release_dead_owners(self, *, besides: str, now: float) -> int:
        """Put back at once (marked interrupted) every task leased by a runner known dead (see
        `Database.dead_owners`), `besides` (the caller) never counted; how many."""
        owners = await tasks.leased_owners(self.db)
        owners.discard(besides)
        if not owners:
            return 0
        dead = await self.db.dead_owners(owners)
        if not dead:
            return 0
        return await self.db.write(lambda tx: tasks.release_owner_leases(tx, dead, now=now))

    def alive(self, owner: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Mark the runner `owner` alive for the block's length (see `Database.alive`)."""
        return self.db.alive(owner)

    async def next_task_run_at(self) -> float | None:
        return await tasks.next_run_at(self.db)

    async def enqueue(
        self, kind: str, job_id: str | None, *, payload: Any = None, now: float, lane: str | None = None
    ) -> None:
        await self.db.write(lambda tx: tasks.insert(tx, kind, job_id, now, payload=payload, lane=lane))
