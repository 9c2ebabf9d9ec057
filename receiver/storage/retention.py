"""What a purge removes (`receiver.jobs.retention`): the keys of purgeable rows of every table, and their deletion.

Functions take the `Transaction` of one purge batch (or, for a dry run's counts, the read-only one of
`receiver.storage.backends.open_read_only`); `blob_in_use` reads through the `Database`. A `limit` of None
means every row (the counts). Keys are whatever identifies a row of that table (an id, a seq, a rowid);
pass them back unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from receiver.storage.base import Database, Row, Transaction

# The tables whose rows a purge deletes by key, and the block that does it.
_DELETE = {
    "delivery_attempts": "retention_delete_attempts",
    "deliveries": "retention_delete_deliveries",
    "events": "retention_delete_events",
    "tasks": "retention_delete_tasks",
    "inbox": "retention_delete_inbox",
    "inputs": "retention_delete_inputs",
    "idempotency_keys": "retention_delete_idempotency_keys",
    "jobs": "retention_delete_jobs",
}
# Job phase: the rows of each table the given jobs own; for `jobs`, those of the given jobs that own no
# rows any more.
_OF_JOBS = {
    "delivery_attempts": "retention_job_attempts",
    "deliveries": "retention_job_deliveries",
    "events": "retention_job_events",
    "tasks": "retention_job_tasks",
    "inbox": "retention_job_inbox",
    "inputs": "retention_job_inputs",
    "job_images": "retention_job_images",
    "jobs": "retention_jobs_emptied",
}
# Row phase: the old finished rows of each table, outside the jobs the job phase takes.
_OLD = {
    "deliveries": "retention_deliveries",
    "events": "retention_events",
    "tasks": "retention_tasks",
    "inbox": "retention_inbox",
    "idempotency_keys": "retention_idempotency_keys",
}


def _ids(keys: Sequence[Any]) -> str:
    return json.dumps(list(keys))


def _keys(tx: Transaction, query: str, limit: int | None, **params: Any) -> list[Any]:
    # -1: SQLite's LIMIT without a bound.
    return [next(iter(row.values())) for row in tx.all(query, limit=-1 if limit is None else limit, **params)]


def purgeable_jobs(tx: Transaction, *, job_cutoff: float, key_cutoff: float, limit: int | None) -> list[str]:
    """Final jobs finished before `job_cutoff` with no live work, oldest first; not one whose
    Idempotency-Key was stored after `key_cutoff`, nor the owner of the newest event."""
    return _keys(tx, "retention_jobs", limit, job_cutoff=job_cutoff, key_cutoff=key_cutoff)


def rows_of_jobs(tx: Transaction, table: str, job_ids: Sequence[str], *, limit: int | None) -> list[Any]:
    """Keys of the rows of `table` the jobs own (for `jobs`: those jobs that own nothing any more)."""
    return _keys(tx, _OF_JOBS[table], limit, ids=_ids(job_ids))


def old_rows(
    tx: Transaction, table: str, *, cutoff: float, keep_jobs: Sequence[str] = (), limit: int | None
) -> list[Any]:
    """Keys of the finished rows of `table` older than `cutoff`, but none of the jobs in `keep_jobs`."""
    return _keys(tx, _OLD[table], limit, cutoff=cutoff, jobs=_ids(keep_jobs))


def attempts_of(tx: Transaction, delivery_ids: Sequence[str], *, limit: int | None) -> list[Any]:
    """Keys of the attempt-log rows of these deliveries."""
    return _keys(tx, "retention_attempts", limit, ids=_ids(delivery_ids))


def delete_rows(tx: Transaction, table: str, keys: Sequence[Any]) -> None:
    """Delete the rows of `table` with these keys (from the functions above)."""
    tx.execute(_DELETE[table], ids=_ids(keys))


def delete_job_images(tx: Transaction, keys: Sequence[Any]) -> set[str]:
    """Delete these image links; the stored images they pointed at."""
    rows = tx.all("retention_delete_job_images", ids=_ids(keys))
    return {row["sha256"] for row in rows if row["sha256"] is not None}


def delete_unused_images(tx: Transaction, sha256s: Sequence[str]) -> list[Row]:
    """Delete the stored images among these that no job refers to any more; returns the deleted rows
    (sha256, thumbnail_sha256): their blob files may go once this commits."""
    return tx.all("retention_delete_images", ids=_ids(sha256s))


def images_only_of_jobs(tx: Transaction, job_ids: Sequence[str]) -> list[Row]:
    """The stored images (sha256, thumbnail_sha256) every link of which belongs to these jobs."""
    return tx.all("retention_job_images_only", ids=_ids(job_ids))


def blob_users(tx: Transaction, sha256: str) -> list[str]:
    """The stored images whose bytes or thumbnail are this blob."""
    return [row["sha256"] for row in tx.all("retention_blob_users", sha256=sha256)]


async def blob_in_use(db: Database, sha256: str) -> bool:
    """Whether a stored image's bytes or thumbnail are this blob."""
    return await db.one("retention_blob_users", sha256=sha256) is not None
