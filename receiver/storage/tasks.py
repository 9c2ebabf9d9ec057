"""The tasks table: the leased work queue, its lanes and the deliver tasks of deliveries. Every query on it.

Functions taking a `Transaction` run inside a caller's transaction body; the reads take the `Database`.
See `receiver.storage.base`. The functions that finish a claimed task (`complete`, `retry`, ...) act only
while `owner` still holds its lease, and return whether they did.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from receiver.models import Task
from receiver.storage.base import Database, Transaction

_compact_json = json.JSONEncoder(separators=(",", ":")).encode  # `json.dumps(...)` builds one per call


def insert(
    tx: Transaction,
    kind: str,
    job_id: str | None,
    now: float,
    *,
    payload: Any = None,
    delay_s: float = 0,
    lane: str | None = None,
) -> None:
    """Queue a task; a second live task of the same kind for the same job is a no-op. Its lane (see
    `receiver.tasks.lanes`) is `lane`, else the job's provider."""
    tx.execute(
        "insert_task",
        kind=kind,
        job_id=job_id,
        payload=_compact_json(payload or {}),
        run_at=now + delay_s,
        lane=lane,
        now=now,
    )


def release_expired_leases(tx: Transaction, *, now: float) -> int:
    """Put every task whose lease ran out back in the queue, marked interrupted; how many."""
    return tx.execute("release_expired_leases", now=now)


def claim(
    tx: Transaction,
    *,
    owner: str,
    kinds: Iterable[str],
    exclude: bool = False,
    limit: int,
    lease_expires_at: float,
    now: float,
    per_lane: int | None = None,
) -> list[Task]:
    """Lease up to `limit` due tasks of `kinds` (with `exclude`: of every kind not in `kinds`), the longest
    due first, to `owner`; with `per_lane`, no lane ends up with more leased tasks of these kinds than that."""
    params: dict[str, Any] = {
        "owner": owner,
        "kinds": json.dumps(sorted(kinds)),
        "member": not exclude,
        "limit": limit,
        "lease_expires_at": lease_expires_at,
        "now": now,
    }
    if per_lane is None:
        rows = tx.all("claim_tasks", **params)
    else:
        rows = tx.all("claim_lane_tasks", **params, per_lane=per_lane)
    return [Task.from_row(row) for row in rows]


def extend_lease(tx: Transaction, task_id: int, *, owner: str, lease_expires_at: float, now: float) -> bool:
    return tx.execute("extend_lease", id=task_id, owner=owner, lease_expires_at=lease_expires_at, now=now) == 1


def extend_owner_leases(
    tx: Transaction, task_ids: Iterable[int], *, owner: str, lease_expires_at: float, now: float
) -> int:
    """The heartbeat of a runner, one statement: the leases `owner` holds on `task_ids` (the tasks it is
    running) now run until `lease_expires_at`; how many. A lease it holds on a task it no longer runs (its
    outcome could not be written) is left to run out, so that another runner takes the task over."""
    ids = _compact_json(sorted(task_ids))
    return tx.execute("extend_owner_leases", ids=ids, owner=owner, lease_expires_at=lease_expires_at, now=now)


def release_owner_leases(tx: Transaction, owners: Iterable[str], *, now: float) -> int:
    """Put every task leased by one of `owners` (runners known dead) back in the queue at once, marked
    interrupted; how many."""
    return tx.execute("release_owner_leases", owners=json.dumps(sorted(owners)), now=now)


async def leased_owners(db: Database) -> set[str]:
    """The owners of every lease held now."""
    return {row["lease_owner"] for row in await db.all("leased_owners")}


def complete(tx: Transaction, task_id: int, *, owner: str, now: float) -> bool:
    """The task is done."""
    return tx.execute("complete_task", id=task_id, owner=owner, now=now) == 1


def retry(tx: Transaction, task_id: int, *, owner: str, run_at: float, error: str, now: float) -> bool:
    """Back in the queue from `run_at`, with the attempt's error."""
    return tx.execute("retry_task", id=task_id, owner=owner, run_at=run_at, error=error, now=now) == 1


def kill(tx: Transaction, task_id: int, *, owner: str, error: str, now: float) -> bool:
    """Dead: never run again (unless replayed)."""
    return tx.execute("kill_task", id=task_id, owner=owner, error=error, now=now) == 1


def defer(tx: Transaction, task_id: int, *, owner: str, run_at: float, now: float) -> bool:
    """Back in the queue from `run_at` without counting the attempt."""
    return tx.execute("defer_task", id=task_id, owner=owner, run_at=run_at, now=now) == 1


def release(tx: Transaction, task_id: int, *, owner: str, now: float) -> bool:
    """Back in the queue at once, untouched, without counting the attempt."""
    return tx.execute("release_task", id=task_id, owner=owner, now=now) == 1


# --- lanes and deliver tasks (`receiver.notify`) -------------------------------------------------------


def queue_deliver(tx: Transaction, tasks: Sequence[tuple[str, str]], *, now: float) -> None:
    """A `deliver` task per (delivery id, lane), due now, in one statement; a delivery whose task is
    still waiting or running keeps that one."""
    tx.execute("insert_deliver_tasks", tasks=_compact_json([list(task) for task in tasks]), now=now)


def hurry_deliver(tx: Transaction, delivery_ids: Sequence[str], *, now: float) -> None:
    """The waiting `deliver` tasks of these deliveries (a failed one's retry) become due now."""
    tx.execute("hurry_deliver_tasks", ids=_compact_json(list(delivery_ids)), now=now)


def hold_lane(
    tx: Transaction, lane: str, *, kind: str, until: float | None, held_until: float | None, now: float
) -> None:
    """Park a lane's waiting tasks of `kind` until `until` (those parked until `held_until` move too)."""
    tx.execute("defer_lane", lane=lane, kind=kind, until=until, held_until=held_until, now=now)


def release_lane(tx: Transaction, lane: str, *, kind: str, until: float, now: float) -> None:
    """Make due now what `hold_lane` parked until `until` or earlier."""
    tx.execute("resume_lane", lane=lane, kind=kind, until=until, now=now)


async def next_run_at(db: Database) -> float | None:
    """When the earliest waiting task is due (None: none waits)."""
    value = await db.value("next_task_run_at")
    return None if value is None else float(value)
