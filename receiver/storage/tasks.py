"""The tasks table: the leased work queue, its lanes and the deliver tasks of deliveries. Every query on it.

Functions taking a `Transaction` run inside a caller's transaction body; the reads take the `Database`.
See `receiver.storage.base`. The functions that finish a claimed task (`complete`, `retry`, ...) act only
while `owner` still holds its lease, and return whether they did.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from receiver.models import Task
from receiver.storage.base import Database, Row, Transaction

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
    `receiver.tasks.lanes`) is `lane`, else the job's provider. Queued (`Transaction.execute_later`): the
    webhook path runs it, and nothing reads its outcome."""
    tx.execute_later(
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


@dataclass(frozen=True, slots=True)
class Want:
    """One pool's share of a claim: up to `limit` due tasks of `kinds` (with `exclude`: of every kind not in
    `kinds`); with `per_lane`, no lane ends up with more leased tasks of these kinds than that, counting every
    runner's."""

    kinds: frozenset[str]
    limit: int
    exclude: bool = False
    per_lane: int | None = None

    def takes(self, kind: str) -> bool:
        return (kind in self.kinds) != self.exclude


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
    """Lease up to `limit` due tasks of `kinds` (with `exclude`: of every kind not in `kinds`) to `owner`, in
    claim order (see `claim_round`); with `per_lane`, no lane ends up with more leased tasks of these kinds
    than that."""
    want = Want(frozenset(kinds), limit, exclude=exclude, per_lane=per_lane)
    [claimed] = claim_round(tx, owner=owner, wants=[want], lease_expires_at=lease_expires_at, now=now)
    return claimed


def claim_round(
    tx: Transaction,
    *,
    owner: str,
    wants: Sequence[Want],
    lease_expires_at: float,
    now: float,
    order: Sequence[str] = (),
    starting: frozenset[str] = frozenset(),
) -> list[list[Task]]:
    """Lease due tasks to `owner` for each of `wants`, in one round; each want's tasks in claim order.

    The queue of each kind and lane is read through its own index, so a claim costs the same whatever the
    backlog. Inside a want, kinds go in `order` (kinds it does not name go after those it does), then the
    longest due first. Kinds in `starting` are claimed last, and not at all while any want leaves due work
    of other kinds behind for lack of slots: the caller's way to finish work before it starts more.
    """
    rank = {kind: position for position, kind in enumerate(order)}
    queues = [row for row in tx.all("task_queues") if row["run_at"] <= now]
    if not queues:
        return [[] for _ in wants]
    leased: dict[tuple[str, str], int] = {}
    if any(want.per_lane is not None for want in wants):
        tx.value("lock_lane_counts")  # lane caps hold across concurrent claimers (PostgreSQL)
        leased = {(row["kind"], row["lane"]): row["n"] for row in tx.all("leased_task_lanes")}
    chosen: list[list[tuple[int, float, int, str]]] = [[] for _ in wants]
    seen: set[int] = set()  # (wants that overlap take each task once)
    behind = False
    for last in (False, True):
        for index, want in enumerate(wants):
            mine = [q for q in queues if want.takes(q["kind"]) and (q["kind"] in starting) == last]
            if not mine or (last and behind):
                continue
            ranked = _candidates(tx, want, mine, leased, chosen[index], now, rank)
            candidates = [c for c in ranked if c[2] not in seen]
            room = want.limit - len(chosen[index])
            chosen[index].extend(candidates[: max(0, room)])
            seen.update(c[2] for c in candidates[: max(0, room)])
            behind = behind or (not last and len(candidates) > room)
    ids = [row[2] for picks in chosen for row in picks]
    if not ids:
        return [[] for _ in wants]
    rows = tx.all("lease_tasks", ids=_compact_json(ids), owner=owner, lease_expires_at=lease_expires_at, now=now)
    by_id = {row["id"]: Task.from_row(row) for row in rows}
    return [[by_id[row[2]] for row in picks if row[2] in by_id] for picks in chosen]


def _candidates(
    tx: Transaction,
    want: Want,
    queues: list[Row],
    leased: dict[tuple[str, str], int],
    taken: list[tuple[int, float, int, str]],
    now: float,
    rank: dict[str, int],
) -> list[tuple[int, float, int, str]]:
    """(rank, run_at, id, lane) of the due tasks `want` may take from `queues`, in claim order, lane caps
    applied (tasks already `taken` in this round count against their lane)."""
    wanted = max(0, want.limit - len(taken)) + 1  # one more than there are slots: is work left behind?
    room: dict[str, int] = {}
    if want.per_lane is not None:
        for lane in {q["lane"] for q in queues}:
            busy = sum(n for (kind, at), n in leased.items() if at == lane and want.takes(kind))
            room[lane] = want.per_lane - busy - sum(1 for row in taken if row[3] == lane)
    found: list[tuple[int, float, int, str]] = []
    for queue in queues:
        limit = wanted if want.per_lane is None else min(wanted, room[queue["lane"]])
        if limit <= 0:
            continue
        position = rank.get(queue["kind"], len(rank))
        for due in tx.all("due_tasks", kind=queue["kind"], lane=queue["lane"], now=now, limit=limit):
            found.append((position, due["run_at"], due["id"], queue["lane"]))
    found.sort()
    if want.per_lane is None:
        return found
    kept = []
    for candidate in found:
        if room[candidate[3]] > 0:
            room[candidate[3]] -= 1
            kept.append(candidate)
    return kept


def extend_lease(
    tx: Transaction, task_id: int, *, owner: str, attempts: int, lease_expires_at: float, now: float
) -> bool:
    return (
        tx.execute(
            "extend_lease", id=task_id, owner=owner, attempts=attempts, lease_expires_at=lease_expires_at, now=now
        )
        == 1
    )


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


def complete(tx: Transaction, task_id: int, *, owner: str, attempts: int, now: float) -> bool:
    """The task is done. Like every call that ends a claim, it acts only on the claim `owner` holds as its
    `attempts`-th (the claim's token): a run whose lease ran out and whose task was claimed again, by any
    runner (this one included), finishes nothing of the new claim."""
    return tx.execute("complete_task", id=task_id, owner=owner, attempts=attempts, now=now) == 1


def retry(tx: Transaction, task_id: int, *, owner: str, attempts: int, run_at: float, error: str, now: float) -> bool:
    """Back in the queue from `run_at`, with the attempt's error."""
    return (
        tx.execute("retry_task", id=task_id, owner=owner, attempts=attempts, run_at=run_at, error=error, now=now) == 1
    )


def kill(tx: Transaction, task_id: int, *, owner: str, attempts: int, error: str, now: float) -> bool:
    """Dead: never run again (unless replayed)."""
    return tx.execute("kill_task", id=task_id, owner=owner, attempts=attempts, error=error, now=now) == 1


def defer(tx: Transaction, task_id: int, *, owner: str, attempts: int, run_at: float, now: float) -> bool:
    """Back in the queue from `run_at` without counting the attempt."""
    return tx.execute("defer_task", id=task_id, owner=owner, attempts=attempts, run_at=run_at, now=now) == 1


def release(tx: Transaction, task_id: int, *, owner: str, attempts: int, now: float) -> bool:
    """Back in the queue at once, untouched, without counting the attempt."""
    return tx.execute("release_task", id=task_id, owner=owner, attempts=attempts, now=now) == 1


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
