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
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from receiver.errors import RetryLaterError
from receiver.images.blobs import BLOB_REFRESH_S, blob_store_for
from receiver.jobs.idempotency import RETENTION_S as KEY_RETENTION_S
from receiver.settings import Settings
from receiver.storage import retention as store
from receiver.storage.backends import open_database, open_read_only
from receiver.storage.base import Database, Row, SchemaBehind, StorageError, Transaction

log = logging.getLogger(__name__)
DAY_S = 86400.0
TABLES = ("jobs", "inbox", "tasks", "events", "deliveries", "delivery_attempts", "inputs", "job_images", "images")
# The job phase's tables, in foreign-key order: children first (then image links, then the jobs).
JOB_TABLES = ("delivery_attempts", "deliveries", "events", "tasks", "inbox", "inputs")
# The row phase's tables after deliveries (which go with their attempt logs first).
# Idempotency keys: the row cutoff is at least a day old (settings), the least a key is kept.
ROW_TABLES = ("events", "tasks", "inbox", "idempotency_keys")


# A blob stored again this recently is being reused by a job whose rows are not committed yet: a
# fetch_images task stores its blobs before its rows, within its lease (RECEIVER_TASK_LEASE_S). An S3 store
# only rewrites a blob stored again once it is BLOB_REFRESH_S old, so a blob just stored is at most that old.
BLOB_GRACE_S = 2 * BLOB_REFRESH_S  # an hour


class BlobRemover(Protocol):
    async def delete(self, sha256: str, *, min_age_s: float = 0.0) -> bool: ...


@dataclass
class PurgeReport:
    """Rows removed (or, for a dry run, that would be) per table, and blob files (or S3 objects) removed."""

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


class _Batch:
    """One write's work: steps in order under a shared row budget; a step runs only when every step
    before it finished (took fewer rows than it was allowed), so children always go before parents."""

    def __init__(self, tx: Transaction, budget: int) -> None:
        self.tx = tx
        self.left = budget
        self.rows: Counter[str] = Counter()
        self.blobs: list[str] = []
        self.finished = True

    def take(self, table: str, select: Callable[..., list[Any]]) -> list[Any]:
        """Delete the rows of `table` whose keys `select(limit=...)` names, as many as the budget allows."""
        allowed = self.left
        if not self.finished or allowed <= 0:
            self.finished = False
            return []
        keys = select(limit=allowed)
        if keys:
            store.delete_rows(self.tx, table, keys)
        self.rows[table] += len(keys)
        self.left -= len(keys)
        self.finished = len(keys) < allowed
        return keys

    def take_job_images(self, job_ids: list[str]) -> None:
        """Image links, and in the same write the stored images no job refers to any more."""
        if not self.finished or self.left < 2:
            self.finished = False
            return
        allowed = self.left // 2  # each link removed may free one image row
        keys = store.rows_of_jobs(self.tx, "job_images", job_ids, limit=allowed)
        shas = store.delete_job_images(self.tx, keys)
        images = store.delete_unused_images(self.tx, sorted(shas))
        for image in images:
            self.blobs.extend(value for value in (image["sha256"], image["thumbnail_sha256"]) if value)
        self.rows["job_images"] += len(keys)
        self.rows["images"] += len(images)
        self.left -= len(keys) + len(images)
        self.finished = len(keys) < allowed


def purge_jobs_batch(tx: Transaction, *, job_cutoff: float, key_cutoff: float, budget: int) -> _Batch:
    """One write of the job phase: the oldest purgeable jobs, children first, at most `budget` rows.
    A job whose Idempotency-Key was stored after `key_cutoff` stays (the key goes with its job)."""
    batch = _Batch(tx, budget)
    job_ids = store.purgeable_jobs(tx, job_cutoff=job_cutoff, key_cutoff=key_cutoff, limit=max(1, budget // 8))
    for table in JOB_TABLES:
        batch.take(table, partial(store.rows_of_jobs, tx, table, job_ids))
    batch.take_job_images(job_ids)
    batch.take("jobs", partial(store.rows_of_jobs, tx, "jobs", job_ids))
    batch.finished = not job_ids
    return batch


def purge_deliveries_batch(tx: Transaction, *, cutoff: float, budget: int) -> _Batch:
    """One write of the row phase's deliveries: a slice of old final deliveries, their attempts first."""
    batch = _Batch(tx, budget)
    chosen = store.old_rows(tx, "deliveries", cutoff=cutoff, limit=budget)
    batch.take("delivery_attempts", partial(store.attempts_of, tx, chosen))
    if batch.finished and chosen:
        keep = chosen[: batch.left]
        store.delete_rows(tx, "deliveries", keep)
        batch.rows["deliveries"] += len(keep)
        batch.left -= len(keep)
    batch.finished = not chosen
    return batch


def purge_rows_batch(tx: Transaction, table: str, *, cutoff: float, budget: int) -> _Batch:
    batch = _Batch(tx, budget)
    batch.take(table, partial(store.old_rows, tx, table, cutoff=cutoff))
    return batch


def count_purge(tx: Transaction, *, cutoff: float | None, job_cutoff: float | None, key_cutoff: float) -> PurgeReport:
    """What a purge with these cutoffs would remove now (rows per table, blob files); reads only."""
    report = PurgeReport(cutoff, job_cutoff, dry_run=True)
    jobs: list[str] = []
    if job_cutoff is not None:
        jobs = store.purgeable_jobs(tx, job_cutoff=job_cutoff, key_cutoff=key_cutoff, limit=None)
        report.rows["jobs"] = len(jobs)
        for table in JOB_TABLES:
            report.rows[table] += len(store.rows_of_jobs(tx, table, jobs, limit=None))
        report.rows["job_images"] = len(store.rows_of_jobs(tx, "job_images", jobs, limit=None))
        images = store.images_only_of_jobs(tx, jobs)
        report.rows["images"] = len(images)
        report.blobs = _count_freed_blobs(tx, images)
    if cutoff is not None:
        deliveries = store.old_rows(tx, "deliveries", cutoff=cutoff, keep_jobs=jobs, limit=None)
        report.rows["deliveries"] += len(deliveries)
        report.rows["delivery_attempts"] += len(store.attempts_of(tx, deliveries, limit=None))
        for table in ROW_TABLES:
            report.rows[table] += len(store.old_rows(tx, table, cutoff=cutoff, keep_jobs=jobs, limit=None))
    return report


def _count_freed_blobs(tx: Transaction, images: Sequence[Row]) -> int:
    going = {image["sha256"] for image in images}
    candidates = {value for image in images for value in (image["sha256"], image["thumbnail_sha256"]) if value}
    freed = 0
    for sha256 in candidates:
        freed += all(user in going for user in store.blob_users(tx, sha256))
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
            for table in ROW_TABLES:
                await self._drain(report, partial(purge_rows_batch, table=table, cutoff=cutoff, budget=self.batch))
        if sum(report.rows.values()):
            log.info("retention purged %s and %d blob files", dict(report.rows), report.blobs)
        return report

    async def _drain(self, report: PurgeReport, write: Callable[[Transaction], _Batch]) -> None:
        """Run `write` batch after batch until its phase is finished (or the worker is stopped)."""
        while not self._stop.is_set():
            started = time.monotonic()
            batch = await self.db.write(write)
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
            if not await store.blob_in_use(self.db, sha256):
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
    may only read. Raises PurgeError (with a message for the operator) when it cannot run. A SQLite file must
    exist (a mistyped path is refused, not created); a PostgreSQL database is named in messages without its URL,
    which may hold a password."""
    where = str(settings.database_path) if settings.is_sqlite else "the PostgreSQL database"
    try:
        if settings.is_sqlite and not settings.database_path.is_file():
            raise PurgeError(f"no database at {where}")
        if dry_run:
            now = clock()
            cutoff, job_cutoff = cutoffs(
                now, retention_days=settings.retention_days, job_retention_days=settings.job_retention_days
            )
            url = settings.database_url
            return await asyncio.to_thread(_count_read_only, url, cutoff, job_cutoff, now - KEY_RETENTION_S)
        async with open_database(settings.database_url) as db:
            blobs = blob_store_for(settings)
            return await Retention.from_settings(settings, db, blobs, clock=clock).run_once()
    except SchemaBehind as exc:
        numbers = ", ".join(str(number) for number in exc.missing)
        raise PurgeError(
            f"the database schema is behind this version (migrations {numbers} not applied): "
            "run `receiver migrate` (or start the server) first; a dry run changes nothing"
        ) from None
    except StorageError as exc:
        raise PurgeError(f"database error on {where}: {exc}") from None
    except RetryLaterError as exc:  # the S3 blob store could not be reached: rerun the purge later
        raise PurgeError(exc.message) from None
    except OSError as exc:
        raise PurgeError(f"cannot use {exc.filename or where}: {exc.strerror or exc}") from None


def _count_read_only(url: str, cutoff: float | None, job_cutoff: float | None, key_cutoff: float) -> PurgeReport:
    with open_read_only(url) as tx:
        return count_purge(tx, cutoff=cutoff, job_cutoff=job_cutoff, key_cutoff=key_cutoff)
