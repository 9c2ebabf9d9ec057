"""Retention: deletes finished work older than the retention period, in small batches that never hold the writer long.

Two phases, in this order. The job phase (only with `job_retention_days`) removes final jobs finished
before the job cutoff that have no live work, with everything they own: delivery attempts, deliveries,
events, finished tasks, inbox rows, served inputs, image links, and the stored images (rows, then blob
files after the commit) no other job refers to. The row phase (with `retention_days`) removes, from the
jobs that stay, what is older than the cutoff and finished: delivered or dead deliveries with their
attempt logs, events none of whose deliveries remain, done or dead tasks, inbox rows of final jobs.

Every batch is one write of at most `batch` rows, selected and deleted in the same transaction (so what
it deletes is consistent with what it checked), and the purge sleeps as long as the batch took before
the next one, so the writer spends at most half its time on a purge and webhooks never wait behind more
than one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from receiver.images.blobs import LocalBlobStore
from receiver.jobs.idempotency import RETENTION_S as KEY_RETENTION_S
from receiver.settings import Settings
from receiver.storage.sqlite import Database, Q, migrations

log = logging.getLogger(__name__)
DAY_S = 86400.0
TABLES = ("jobs", "inbox", "tasks", "events", "deliveries", "delivery_attempts", "inputs", "job_images", "images")
# (table, select block, delete block) of the job phase, in foreign-key order: children first.
JOB_STEPS = (
    ("delivery_attempts", "retention_job_attempts", "retention_delete_attempts"),
    ("deliveries", "retention_job_deliveries", "retention_delete_deliveries"),
    ("events", "retention_job_events", "retention_delete_events"),
    ("tasks", "retention_job_tasks", "retention_delete_tasks"),
    ("inbox", "retention_job_inbox", "retention_delete_inbox"),
    ("inputs", "retention_job_inputs", "retention_delete_inputs"),
)
ROW_STEPS = (
    ("events", "retention_events", "retention_delete_events"),
    ("tasks", "retention_tasks", "retention_delete_tasks"),
    ("inbox", "retention_inbox", "retention_delete_inbox"),
    # Idempotency keys: the row cutoff is at least a day old (settings), the least a key is kept.
    ("idempotency_keys", "retention_idempotency_keys", "retention_delete_idempotency_keys"),
)


# A blob stored again this recently is being reused by a job whose rows are not committed yet: a
# fetch_images task stores its blobs before its rows, within its lease (RECEIVER_TASK_LEASE_S).
BLOB_GRACE_S = 3600.0


class BlobRemover(Protocol):
    async def delete(self, sha256: str, *, min_age_s: float = 0.0) -> bool: ...


@dataclass
class PurgeReport:
    """Rows removed (or, for a dry run, that would be) per table, and blob files removed."""

    cutoff: float | None
    job_cutoff: float | None
    dry_run: bool = False
    rows: Counter[str] = field(default_factory=Counter)
    blobs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "cutoff": self.cutoff,
            "job_cutoff": self.job_cutoff,
            "rows": {table: self.rows[table] for table in TABLES},
            "blobs": self.blobs,
        }


def cutoffs(
    now: float, *, retention_days: float, job_retention_days: float | None
) -> tuple[float | None, float | None]:
    """(row cutoff, job cutoff) as Unix seconds; None where that phase is off (0 days / unset)."""
    cutoff = now - retention_days * DAY_S if retention_days > 0 else None
    job_cutoff = now - job_retention_days * DAY_S if job_retention_days else None
    return cutoff, job_cutoff


def _keys(conn: sqlite3.Connection, block: str, params: dict[str, Any], limit: int) -> list[Any]:
    return [row[0] for row in conn.execute(Q[block], {**params, "limit": limit})]


class _Batch:
    """One write's work: steps in order under a shared row budget; a step runs only when every step
    before it finished (took fewer rows than it was allowed), so children always go before parents."""

    def __init__(self, conn: sqlite3.Connection, budget: int) -> None:
        self.conn = conn
        self.left = budget
        self.rows: Counter[str] = Counter()
        self.blobs: list[str] = []
        self.finished = True

    def take(self, table: str, select: str, delete: str, params: dict[str, Any]) -> list[Any]:
        allowed = self.left
        if not self.finished or allowed <= 0:
            self.finished = False
            return []
        keys = _keys(self.conn, select, params, allowed)
        if keys:
            self.conn.execute(Q[delete], {"ids": json.dumps(keys)})
        self.rows[table] += len(keys)
        self.left -= len(keys)
        self.finished = len(keys) < allowed
        return keys

    def take_job_images(self, ids: str) -> None:
        """Image links, and in the same write the stored images no job refers to any more."""
        if not self.finished or self.left < 2:
            self.finished = False
            return
        allowed = self.left // 2  # each link removed may free one image row
        keys = _keys(self.conn, "retention_job_images", {"ids": ids}, allowed)
        shas = {row[0] for row in self.conn.execute(Q["retention_delete_job_images"], {"ids": json.dumps(keys)})}
        images = self.conn.execute(Q["retention_delete_images"], {"ids": json.dumps(sorted(shas - {None}))}).fetchall()
        for sha256, thumbnail in images:
            self.blobs.extend(value for value in (sha256, thumbnail) if value)
        self.rows["job_images"] += len(keys)
        self.rows["images"] += len(images)
        self.left -= len(keys) + len(images)
        self.finished = len(keys) < allowed


def purge_jobs_batch(conn: sqlite3.Connection, *, job_cutoff: float, key_cutoff: float, budget: int) -> _Batch:
    """One write of the job phase: the oldest purgeable jobs, children first, at most `budget` rows.
    A job whose Idempotency-Key was stored after `key_cutoff` stays (the key goes with its job)."""
    batch = _Batch(conn, budget)
    params = {"job_cutoff": job_cutoff, "key_cutoff": key_cutoff}
    ids = json.dumps(_keys(conn, "retention_jobs", params, max(1, budget // 8)))
    for table, select, delete in JOB_STEPS:
        batch.take(table, select, delete, {"ids": ids})
    batch.take_job_images(ids)
    batch.take("jobs", "retention_jobs_emptied", "retention_delete_jobs", {"ids": ids})
    batch.finished = ids == "[]"
    return batch


def purge_deliveries_batch(conn: sqlite3.Connection, *, cutoff: float, budget: int) -> _Batch:
    """One write of the row phase's deliveries: a slice of old final deliveries, their attempts first."""
    batch = _Batch(conn, budget)
    chosen = _keys(conn, "retention_deliveries", {"cutoff": cutoff, "jobs": "[]"}, budget)
    batch.take("delivery_attempts", "retention_attempts", "retention_delete_attempts", {"ids": json.dumps(chosen)})
    if batch.finished and chosen:
        keep = chosen[: batch.left]
        batch.conn.execute(Q["retention_delete_deliveries"], {"ids": json.dumps(keep)})
        batch.rows["deliveries"] += len(keep)
        batch.left -= len(keep)
    batch.finished = not chosen
    return batch


def purge_rows_batch(conn: sqlite3.Connection, step: tuple[str, str, str], *, cutoff: float, budget: int) -> _Batch:
    batch = _Batch(conn, budget)
    table, select, delete = step
    batch.take(table, select, delete, {"cutoff": cutoff, "jobs": "[]"})
    return batch


def count_purge(
    conn: sqlite3.Connection, *, cutoff: float | None, job_cutoff: float | None, key_cutoff: float
) -> PurgeReport:
    """What a purge with these cutoffs would remove now (rows per table, blob files); reads only."""
    report = PurgeReport(cutoff, job_cutoff, dry_run=True)
    jobs: list[Any] = []
    if job_cutoff is not None:
        jobs = _keys(conn, "retention_jobs", {"job_cutoff": job_cutoff, "key_cutoff": key_cutoff}, -1)
        ids = json.dumps(jobs)
        report.rows["jobs"] = len(jobs)
        for table, select, _ in JOB_STEPS:
            report.rows[table] += len(_keys(conn, select, {"ids": ids}, -1))
        report.rows["job_images"] = len(_keys(conn, "retention_job_images", {"ids": ids}, -1))
        images = conn.execute(Q["retention_job_images_only"], {"ids": ids}).fetchall()
        report.rows["images"] = len(images)
        report.blobs = _count_freed_blobs(conn, images)
    if cutoff is not None:
        params = {"cutoff": cutoff, "jobs": json.dumps(jobs)}
        deliveries = _keys(conn, "retention_deliveries", params, -1)
        report.rows["deliveries"] += len(deliveries)
        report.rows["delivery_attempts"] += len(_keys(conn, "retention_attempts", {"ids": json.dumps(deliveries)}, -1))
        for table, select, _ in ROW_STEPS:
            report.rows[table] += len(_keys(conn, select, params, -1))
    return report


def _count_freed_blobs(conn: sqlite3.Connection, images: Sequence[sqlite3.Row | tuple[Any, ...]]) -> int:
    going = {row[0] for row in images}
    candidates = {value for row in images for value in row if value}
    freed = 0
    for sha256 in candidates:
        users = conn.execute(Q["retention_blob_users"], {"sha256": sha256}).fetchall()
        freed += all(user[0] in going for user in users)
    return freed


class Retention:
    """The periodic purge: every `interval_s`, one `run_once()`; `stop()` ends it between two batches."""

    def __init__(
        self,
        db: Database,
        blobs: BlobRemover,
        *,
        clock: Callable[[], float],
        retention_days: float,
        job_retention_days: float | None,
        interval_s: float,
        batch: int = 500,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.clock = clock
        self.retention_days = retention_days
        self.job_retention_days = job_retention_days
        self.interval_s = interval_s
        self.batch = batch
        self.writes = 0  # batches written, over the worker's life (tests and logs)
        self.passes = 0  # purges completed by `run()`
        self._stop = asyncio.Event()

    @classmethod
    def from_settings(
        cls, settings: Settings, db: Database, blobs: BlobRemover, *, clock: Callable[[], float]
    ) -> Retention:
        return cls(
            db,
            blobs,
            clock=clock,
            retention_days=settings.retention_days,
            job_retention_days=settings.job_retention_days,
            interval_s=settings.retention_interval_s,
            batch=settings.retention_batch,
        )

    async def run_once(self) -> PurgeReport:
        """One full purge at the current cutoffs; returns what it removed."""
        now = self.clock()
        cutoff, job_cutoff = cutoffs(
            now, retention_days=self.retention_days, job_retention_days=self.job_retention_days
        )
        report = PurgeReport(cutoff, job_cutoff)
        if job_cutoff is not None:
            write = partial(
                purge_jobs_batch, job_cutoff=job_cutoff, key_cutoff=now - KEY_RETENTION_S, budget=self.batch
            )
            await self._drain(report, write)
        if cutoff is not None:
            await self._drain(report, partial(purge_deliveries_batch, cutoff=cutoff, budget=self.batch))
            for step in ROW_STEPS:
                await self._drain(report, partial(purge_rows_batch, step=step, cutoff=cutoff, budget=self.batch))
        if sum(report.rows.values()):
            log.info("retention purged %s and %d blob files", dict(report.rows), report.blobs)
        return report

    async def _drain(self, report: PurgeReport, write: Callable[[sqlite3.Connection], _Batch]) -> None:
        """Run `write` batch after batch until its phase is finished (or the worker is stopped)."""
        while not self._stop.is_set():
            started = time.monotonic()
            batch = await self.db.writer.run(write)
            self.writes += 1
            report.rows.update(batch.rows)
            report.blobs += await self._remove_blobs(batch.blobs)
            if batch.finished or not sum(batch.rows.values()):  # never spin on rows it cannot remove
                return
            # Leave the writer to everyone else for as long as this batch held it.
            await asyncio.sleep(time.monotonic() - started)

    async def _remove_blobs(self, candidates: list[str]) -> int:
        """Blob files of image rows now committed gone, unless a stored image (re)uses them meanwhile."""
        removed = 0
        for sha256 in dict.fromkeys(candidates):
            if await self.db.fetch_one(Q["retention_blob_users"], {"sha256": sha256}) is None:
                removed += await self.blobs.delete(sha256, min_age_s=BLOB_GRACE_S)
        return removed

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
                self.passes += 1
            except Exception:
                log.exception("retention pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval_s)

    def stop(self) -> None:
        self._stop.set()


class PurgeError(Exception):
    """`receiver purge` cannot run: no database, a schema behind this version, or a file it may not use."""


async def purge(settings: Settings, *, dry_run: bool, clock: Callable[[], float] = time.time) -> PurgeReport:
    """One purge of the configured database now (`receiver purge`). A dry run opens the database read-only
    and only counts: it never migrates, creates or chmods a file, so it works on a copy or as a user who
    may only read. Raises PurgeError (with a message for the operator) when it cannot run."""
    path = settings.database_path
    try:
        if not path.is_file():
            raise PurgeError(f"no database at {path}")
        if dry_run:
            now = clock()
            cutoff, job_cutoff = cutoffs(
                now, retention_days=settings.retention_days, job_retention_days=settings.job_retention_days
            )
            return await asyncio.to_thread(_count_read_only, path, cutoff, job_cutoff, now - KEY_RETENTION_S)
        db = Database(path)
        await db.open()
        try:
            blobs = LocalBlobStore(settings.blobs_dir)
            return await Retention.from_settings(settings, db, blobs, clock=clock).run_once()
        finally:
            await db.close()
    except sqlite3.Error as exc:
        raise PurgeError(f"database error on {path}: {exc}") from None
    except OSError as exc:
        raise PurgeError(f"cannot use {exc.filename or path}: {exc.strerror or exc}") from None


def _count_read_only(path: Path, cutoff: float | None, job_cutoff: float | None, key_cutoff: float) -> PurgeReport:
    conn = _open_read_only(path)
    try:
        behind = _missing_migrations(conn)
        if behind:
            numbers = ", ".join(str(number) for number in behind)
            raise PurgeError(
                f"the database schema is behind this version (migrations {numbers} not applied): "
                "run `receiver migrate` (or start the server) first; a dry run changes nothing"
            )
        return count_purge(conn, cutoff=cutoff, job_cutoff=job_cutoff, key_cutoff=key_cutoff)
    finally:
        conn.close()


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection (SQLite `mode=ro`: nothing is written, created or chmodded). A WAL database
    that no server has open (no `-wal` file) in a directory this user may not write (so its `-shm` cannot
    be created) is read as `immutable`: no one is writing it."""
    uri = path.resolve().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")  # SQLite opens lazily: this is the open
        return conn
    except sqlite3.OperationalError:
        conn.close()
        if path.with_name(path.name + "-wal").exists():
            raise
    conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)
    conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    return conn


def _missing_migrations(conn: sqlite3.Connection) -> list[int]:
    """Numbers of this version's migrations the database has not applied (all when it has none)."""
    try:
        done = {row[0] for row in conn.execute("SELECT number FROM schema_migrations")}
    except sqlite3.OperationalError:
        done = set()  # no schema_migrations table: a database never migrated
    return [number for number, _, _ in migrations() if number not in done]
