"""The database side of `GET /metrics`: the task-queue gauges, read at scrape time. Cheap reads through the
tasks table's partial indexes (see `sql/<dialect>/metrics.sql`)."""

from __future__ import annotations

from receiver.storage.base import Database


async def task_queues(db: Database, *, now: float) -> dict[str, tuple[int, float]]:
    """Per task kind with pending tasks: (how many, seconds the longest-due one has been due; 0 if none is)."""
    rows = await db.all("metrics_task_queues")
    return {row["kind"]: (int(row["n"]), max(0.0, now - float(row["first_run_at"]))) for row in rows}


async def dead_tasks(db: Database) -> dict[str, int]:
    """Per task kind: dead tasks still in the table."""
    return {row["kind"]: int(row["n"]) for row in await db.all("metrics_dead_tasks")}
