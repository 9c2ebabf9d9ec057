"""The outbox: the task table as a leased work queue, and the reconciler's scheduling writes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from receiver.jobs.transitions import dumps, insert_task
from receiver.models import Task
from receiver.storage.sqlite import Database, Q
from receiver.tasks.lanes import Pool


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
        None takes every kind not in `others` (the kinds the named pools own)."""
        rest = json.dumps(sorted(others))

        def write(conn: sqlite3.Connection) -> list[list[Task]]:
            conn.execute(Q["release_expired_leases"], {"now": now})
            claimed: list[list[Task]] = []
            for pool, limit in wants:
                params: dict[str, Any] = {"owner": owner, "lease_expires_at": now + lease_s, "limit": limit, "now": now}
                if pool is None:
                    params.update(kinds=rest, member=0)
                else:
                    params.update(kinds=json.dumps(sorted(pool.kinds)), member=1)
                if limit <= 0:
                    claimed.append([])
                elif pool is not None and pool.per_lane is not None:
                    rows = conn.execute(Q["claim_lane_tasks"], {**params, "per_lane": pool.per_lane}).fetchall()
                    claimed.append([Task.from_row(row) for row in rows])
                else:
                    claimed.append([Task.from_row(row) for row in conn.execute(Q["claim_tasks"], params).fetchall()])
            return claimed

        return await self.db.writer.run(write)

    async def _update(self, name: str, params: dict[str, Any]) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            return conn.execute(Q[name], params).rowcount == 1

        return await self.db.writer.run(write)

    async def complete_task(self, task: Task, *, owner: str, now: float) -> bool:
        return await self._update("complete_task", {"id": task.id, "owner": owner, "now": now})

    async def retry_task(self, task: Task, *, owner: str, run_at: float, error: str, now: float) -> bool:
        params = {"id": task.id, "owner": owner, "run_at": run_at, "error": error[:2000], "now": now}
        return await self._update("retry_task", params)

    async def kill_task(self, task: Task, *, owner: str, error: str, now: float) -> bool:
        return await self._update("kill_task", {"id": task.id, "owner": owner, "error": error[:2000], "now": now})

    async def defer_task(self, task: Task, *, owner: str, run_at: float, now: float) -> bool:
        """Put a claimed task back for later without counting the attempt (a provider slot is busy)."""
        return await self._update("defer_task", {"id": task.id, "owner": owner, "run_at": run_at, "now": now})

    async def release_task(self, task: Task, *, owner: str, now: float) -> bool:
        """Give a claimed task back untouched (graceful shutdown before it started)."""
        return await self._update("release_task", {"id": task.id, "owner": owner, "now": now})

    async def extend_lease(self, task: Task, *, owner: str, lease_s: float, now: float) -> bool:
        params = {"id": task.id, "owner": owner, "lease_expires_at": now + lease_s, "now": now}
        return await self._update("extend_lease", params)

    async def next_task_run_at(self) -> float | None:
        row = await self.db.fetch_one(Q["next_task_run_at"])
        return None if row is None else row[0]

    async def enqueue(
        self, kind: str, job_id: str | None, *, payload: Any = None, now: float, lane: str | None = None
    ) -> None:
        def write(conn: sqlite3.Connection) -> None:
            insert_task(conn, kind, job_id, now, payload=payload, lane=lane)

        await self.db.writer.run(write)

    async def schedule_polls(self, *, now: float, limit: int, max_interval_s: float) -> list[str]:
        """Queue a `poll` task for every open job whose next poll is due; space its next poll out
        (the job's provider pace, doubling per poll, capped)."""

        def write(conn: sqlite3.Connection) -> list[str]:
            due = conn.execute(Q["select_due_polls"], {"now": now, "limit": limit}).fetchall()
            for row in due:
                insert_task(conn, "poll", row["id"], now)
                gap = min(max_interval_s, row["poll_base_s"] * 2 ** min(row["poll_count"], 20))
                conn.execute(Q["schedule_next_poll"], {"id": row["id"], "next_poll_at": now + gap})
            return [row["id"] for row in due]

        return await self.db.writer.run(write)

    async def expire_jobs(self, *, deadline: float, now: float, timeout_s: float) -> list[str]:
        """Fail every unfinished job created before `deadline`, and ask the provider to stop the ones it has."""
        error = dumps({"code": "timeout", "message": f"no final result from the provider within {timeout_s:g} s"})

        def write(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(Q["expire_jobs"], {"deadline": deadline, "error": error, "now": now}).fetchall()
            for row in rows:
                insert_task(conn, "notify", row["id"], now, payload={"event": "job.failed"})
                if row["provider_request_id"]:
                    insert_task(conn, "cancel", row["id"], now)
            return [row["id"] for row in rows]

        return await self.db.writer.run(write)
