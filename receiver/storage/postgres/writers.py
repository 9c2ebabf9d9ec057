"""The PostgreSQL writer threads: transaction bodies queued from the event loop, group-committed in batches
(a savepoint per body), batches run again after a serialization failure or a deadlock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
import time
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from receiver.storage.base import DatabaseClosed, StorageError, WriteFn
from receiver.storage.postgres.driver import (
    RETRYABLE,
    DatabaseUrl,
    PostgresTransaction,
    Unsynced,
    chained,
    notify_statement,
)
from receiver.support.batching import settle, settle_all

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 64  # PostgreSQL caches 64 subtransaction ids per backend: more savepoints that write slow snapshots
BATCH_ATTEMPTS = 5  # a batch that hits a serialization failure or a deadlock runs again, this many times in all
OPEN_TIMEOUT_S = 30.0


class _Retry(Exception):
    """The batch must run again from the start (nothing of it was committed). `stale`: only because the pooled
    connection was one the server had dropped (that costs no attempt: each of the pool's may be)."""

    def __init__(self, cause: Exception, *, stale: bool = False) -> None:
        super().__init__(str(cause))
        self.cause, self.stale = cause, stale


class _Rerun(Exception):
    """The batch must run again without the body at `position`, whose queued statement failed (`error`, its
    outcome) after its savepoint was released (nothing of the batch was committed)."""

    def __init__(self, position: int, error: Exception) -> None:
        super().__init__(str(error))
        self.position, self.error = position, error


class _Item:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: WriteFn[Any], future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn, self.future, self.loop = fn, future, loop


class Writers:
    """The writer threads and their pool; `await writers.run(fn)` returns once `fn`'s work is committed."""

    def __init__(self, url: DatabaseUrl, count: int) -> None:
        self._url = url
        self._count = count
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] | None = None
        self._threads: list[threading.Thread] = []
        self._accepting = False
        self._counts = threading.Lock()
        self.commits = 0
        self.writes = 0

    def start(self) -> None:
        """Open the pool (every connection up front) and start the threads (driver errors untranslated)."""
        pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            self._url.url,
            min_size=self._count,
            max_size=self._count,
            kwargs={"row_factory": dict_row, "autocommit": True, **self._url.connect_kwargs()},
            open=False,
            name="receiver-writers",
        )
        try:
            pool.open(wait=True, timeout=OPEN_TIMEOUT_S)
        except BaseException:
            pool.close()
            raise
        self._pool = pool
        self._threads = [
            threading.Thread(target=self._loop, args=(pool,), name=f"receiver-writer-{n}", daemon=True)
            for n in range(self._count)
        ]
        for thread in self._threads:
            thread.start()
        self._accepting = True

    async def run(self, fn: WriteFn[T]) -> T:
        if not self._accepting:
            raise DatabaseClosed("database is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Item(fn, future, loop))
        return await future

    def stop(self) -> None:
        """Finish what is queued, stop the threads, close the pool; writes queued later are refused."""
        self._accepting = False
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []
        self._fail_leftovers()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _fail_leftovers(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                closed = DatabaseClosed("database is not open (closed before this write ran)")
                item.loop.call_soon_threadsafe(settle, item.future, False, closed)

    def _loop(self, pool: ConnectionPool[psycopg.Connection[dict[str, Any]]]) -> None:
        stop = False
        while not stop:
            batch, stop = self._take_batch()
            if batch:
                self._commit_batch(pool, batch)

    def _take_batch(self) -> tuple[list[_Item], bool]:
        """Wait for one body, then take this thread's share of what else is queued (up to `MAX_BATCH`), so a
        burst is spread over the writers, whose transactions PostgreSQL runs side by side. `stop` as
        `take_batch`'s."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        share = min(MAX_BATCH, 1 + self._queue.qsize() // self._count)
        while len(batch) < share:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _commit_batch(self, pool: ConnectionPool[psycopg.Connection[dict[str, Any]]], batch: list[_Item]) -> None:
        outcomes: list[tuple[bool, Any]]
        channels: set[str] = set()
        failed: dict[int, Exception] = {}  # bodies whose queued statement failed: the batch runs without them
        attempt, stale = 1, 0
        while True:
            running = [(position, item) for position, item in enumerate(batch) if position not in failed]
            try:
                ran: dict[int, tuple[bool, Any]] = {}
                if running:
                    with pool.connection() as conn:
                        ran, channels = _run_batch(conn, running)
                outcomes = [(False, failed[n]) if n in failed else ran[n] for n in range(len(batch))]
            except _Rerun as rerun:
                failed[rerun.position] = rerun.error
                continue
            except _Retry as retry:
                if retry.stale and stale < self._count:
                    stale += 1
                    continue
                if not retry.stale and attempt < BATCH_ATTEMPTS:
                    log.info("write batch of %d runs again (%s)", len(batch), type(retry.cause).__name__)
                    time.sleep(random.uniform(0, 0.01 * attempt))
                    attempt += 1
                    continue
                outcomes = [(False, failed.get(n) or chained(retry.cause, self._url)) for n in range(len(batch))]
            except Exception as exc:  # the commit itself failed: nothing in the batch is durable
                log.error("write batch of %d failed: %s", len(batch), self._url.redact(str(exc)))
                # One exception per caller (each raise adds to its traceback), the driver's translated.
                outcomes = [(False, failed.get(n) or chained(exc, self._url)) for n in range(len(batch))]
            break
        self._settle(batch, outcomes)
        if channels:  # after the callers are answered: the wake-up is not theirs to wait for
            with pool.connection() as conn:
                _notify(conn, channels, self._url)

    def _settle(self, batch: list[_Item], outcomes: list[tuple[bool, Any]]) -> None:
        with self._counts:
            self.commits += 1
            self.writes += len(batch)
        # One wake-up per event loop per batch (not one self-pipe write per item).
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for item, (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(item.loop, []).append((item.future, ok, value))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle_all, settled)


def _notify(conn: psycopg.Connection[Any], channels: set[str], url: DatabaseUrl) -> None:
    """Wake the other processes' listeners for what a committed batch inserted (migration 0010). A failure
    is logged only: the writes are committed, and the listeners' poll backstops the wake-up."""
    try:
        conn.execute(notify_statement(channels))
    except psycopg.Error as exc:
        log.warning("could not notify %s: %s", ", ".join(sorted(channels)), url.redact(str(exc)))
        _rollback(conn)


def _run_batch(
    conn: psycopg.Connection[dict[str, Any]], batch: list[tuple[int, _Item]]
) -> tuple[dict[int, tuple[bool, Any]], set[str]]:
    """Every body of `batch` (with its position in the writer's batch) in one transaction on `conn` (autocommit
    mode, so the transaction is ours to begin and end), each in a savepoint when there are several; the
    outcomes by position once committed, and the LISTEN channels of the committed bodies' inserts. Raises
    `_Retry` when the batch must run again, `_Rerun` when it must run again without a body whose queued
    statement failed, a driver error when the commit failed.

    The batch runs in psycopg's pipeline mode: a body's statement is sent with a sync and waited for (the body
    reads its outcome), but BEGIN, the savepoint statements, COMMIT and the bodies' queued statements
    (`execute_later`) are only queued, and travel with the next statement's round trip (COMMIT with its own
    sync). So a body costs the round trips of the statements whose outcome it reads and nothing more, and a
    savepoint rolled back to stays open for the next body. A queued statement that fails is found at that
    sync (`Unsynced`): if its body has ended already, the batch runs again without it. A connection found
    broken by the first body's statements (one the server dropped while it sat in the pool) is a stale one:
    nothing was committed, the batch runs again on another."""
    single = len(batch) == 1  # no savepoint needed: the body's failure is the transaction's
    outcomes: dict[int, tuple[bool, Any]] = {}
    channels: set[str] = set()
    try:
        with conn.pipeline() as pipeline:
            unsynced = Unsynced(conn, pipeline)
            conn.execute(b"BEGIN")
            if not single:
                conn.execute(b"SAVEPOINT item")
            cur = conn.cursor()
            for count, (position, item) in enumerate(batch, 1):
                tx = PostgresTransaction(cur, unsynced, position)
                try:
                    result = item.fn(tx)
                except Exception as exc:
                    if count == 1 and conn.broken:
                        raise _Retry(exc, stale=True) from exc
                    _check(unsynced, tx, position, exc)
                    if not single:
                        conn.execute(b"ROLLBACK TO SAVEPOINT item")
                    outcomes[position] = (False, exc)
                else:
                    if count == 1 and conn.broken:
                        raise _Retry(psycopg.OperationalError("connection lost"), stale=True)
                    _check(unsynced, tx, position, None)
                    if count < len(batch):
                        _send(unsynced, b"RELEASE SAVEPOINT item")
                        _send(unsynced, b"SAVEPOINT item")
                    outcomes[position] = (True, result)
                    channels |= tx.channels
                    unsynced.at_commit.extend((position, sql, params) for sql, params in tx.at_commit)
            if single and not outcomes[batch[0][0]][0]:
                conn.execute(b"ROLLBACK")
            else:
                # The statements left to the end (the events' inserts, which take the events' ordering lock
                # and hold it to the commit), in the bodies' order, then COMMIT: one round trip for them all.
                for position, sql, params in unsynced.at_commit:
                    _send(unsynced, sql, params, position=position)
                _send(unsynced, b"COMMIT")
                if unsynced.pending:
                    _commit_queued(conn, unsynced)
        return outcomes, channels
    except RETRYABLE as exc:  # at COMMIT (a serializable conflict, a deferred check's deadlock)
        _rollback(conn)
        raise _Retry(exc) from exc
    except psycopg.OperationalError as exc:
        if not outcomes and conn.broken:  # stale, found by the first statement (BEGIN's sync)
            raise _Retry(exc, stale=True) from exc
        _rollback(conn)
        raise
    except BaseException:
        _rollback(conn)
        raise


def _check(unsynced: Unsynced, tx: PostgresTransaction, position: int, raised: Exception | None) -> None:
    """After a body ended (`raised`: what it raised): the batch runs again if a statement of it asked for that
    (a serialization failure, a deadlock; `_Retry`) or another body's queued statement failed (`_Rerun`). A
    body that raised has its queued statements synced here (their failure is its own, and already is)."""
    if tx.retry is not None:
        raise _Retry(tx.retry) from raised
    if raised is not None and unsynced.culprit is None:
        with contextlib.suppress(psycopg.Error, StorageError):
            unsynced.sync(position)
        if tx.retry is not None:
            raise _Retry(tx.retry) from raised
    if unsynced.culprit is not None:
        raise _Rerun(*unsynced.culprit)


def _send(unsynced: Unsynced, sql: bytes | str, params: dict[str, Any] | None = None, *, position: int = -1) -> None:
    """Queue a statement once the bodies have ended: the writer's own (savepoints, COMMIT), or one body
    `position` left for the commit (then its failure is found at the COMMIT's sync, or here). A queued
    statement that failed may surface here: the batch then runs again without its body."""
    try:
        if position < 0:
            unsynced.execute(-1, unsynced.conn.cursor(), sql, params)
        else:
            unsynced.send(position, sql, params or {}, running=-1)
    except psycopg.Error as exc:
        if unsynced.culprit is not None:
            raise _Rerun(*unsynced.culprit) from exc
        raise


def _commit_queued(conn: psycopg.Connection[Any], unsynced: Unsynced) -> None:
    """Sync the COMMIT that carries queued statements: if one of them failed, the COMMIT did nothing (the
    transaction is left aborted, not ended) and the batch runs again without that statement's body."""
    try:
        unsynced.pipeline.sync()
    except psycopg.Error as exc:
        if isinstance(exc, RETRYABLE) or conn.broken:
            raise
        with contextlib.suppress(psycopg.Error):
            unsynced.pipeline.sync()
        owner = unsynced.owner(exc, -1)
        if owner < 0 or conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            raise  # the COMMIT itself failed
        raise _Rerun(owner, chained(exc)) from exc
    finally:
        unsynced.pending.clear()


def _rollback(conn: psycopg.Connection[Any]) -> None:
    if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")
