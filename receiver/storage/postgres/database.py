"""The PostgreSQL `Database`: the writers, a pool of async connections for reads, LISTEN wake-ups, liveness by
session advisory lock, and the scrubbed write."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any, TypeVar

import psycopg
from psycopg import sql as pg_sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolClosed

from receiver.storage import base
from receiver.storage.base import DatabaseClosed, Row, WriteFn
from receiver.storage.postgres.driver import (
    DatabaseUrl,
    PostgresTransaction,
    chained,
    connect,
    connect_async,
    notify_statement,
)
from receiver.storage.postgres.queries import QUERIES
from receiver.storage.postgres.schema import apply_migrations
from receiver.storage.postgres.writers import OPEN_TIMEOUT_S, Writers

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_POOL_SIZE = 10
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.2, 5.0  # backoff of the LISTEN and liveness connections
ALIVE_CHECK_S = 5.0  # how often a liveness connection checks that it still holds its lock
CHANNELS = ("receiver_tasks", "receiver_events")  # what the writers NOTIFY after inserts (migration 0010)

# Liveness: a shared session advisory lock per owner on a 64-bit key hashed from its name (shared: two
# owners whose names collide never block each other). pg_locks shows a 64-bit key as classid (its high 32
# bits) and objid (its low 32 bits), with objsubid 1.
_TAKE_ALIVE = "SELECT pg_advisory_lock_shared(hashtextextended(%(owner)s, 0))"
_DEAD_OWNERS = """
SELECT o.owner FROM unnest(%(owners)s::text[]) AS o(owner)
WHERE NOT EXISTS (
    SELECT 1 FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ((hashtextextended(o.owner, 0) >> 32) & 4294967295)::oid
      AND l.objid = (hashtextextended(o.owner, 0) & 4294967295)::oid
)
"""
# The tables a transaction updated or deleted rows of (before it commits): what `write_scrubbed` vacuums.
_TOUCHED_TABLES = """
SELECT schemaname, relname FROM pg_stat_xact_user_tables
WHERE n_tup_upd + n_tup_del > 0 ORDER BY schemaname, relname
"""


class Database(base.Database):
    """Writer threads plus a pool of async connections for reads (see the module docstring).

    `pool_size` is how many connections the pools hold: half for the writer threads (each holds one), half for
    reads; `watching` and each `alive` block hold one more while they last. `alive_check_s`: how often an
    `alive` block checks that its connection (and so its lock) is still there."""

    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE, alive_check_s: float = ALIVE_CHECK_S) -> None:
        self._url = DatabaseUrl(url)
        self._alive_check_s = alive_check_s
        self._writer_count = max(1, pool_size // 2)
        self._read_size = max(1, pool_size - self._writer_count)
        self._writers = Writers(self._url, self._writer_count)
        self._reads: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] | None = None

    def __repr__(self) -> str:
        return f"<postgres.Database {'open' if self._reads is not None else 'closed'}>"

    @property
    def commits(self) -> int:  # type: ignore[override]
        return self._writers.commits

    @property
    def writes(self) -> int:  # type: ignore[override]
        return self._writers.writes

    async def open(self) -> None:
        """Migrate (under the advisory lock), then open the writers and the read pool. A driver error is
        raised as a `StorageError` and leaves nothing open."""
        try:
            await asyncio.to_thread(self._start_writers)
            reads: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] = AsyncConnectionPool(
                self._url.url,
                min_size=1,
                max_size=self._read_size,
                kwargs={"row_factory": dict_row, "autocommit": True, **self._url.connect_kwargs()},
                open=False,
                name="receiver-reads",
            )
            try:
                await reads.open(wait=True, timeout=OPEN_TIMEOUT_S)
            except BaseException:
                await reads.close()
                raise
            self._reads = reads
        except Exception as exc:
            await self.close()
            if isinstance(exc, psycopg.Error):  # PoolTimeout included
                raise chained(exc, self._url) from exc
            raise

    def _start_writers(self) -> None:
        with connect(self._url) as conn:  # fails fast on a bad URL or password, where a pool would retry
            apply_migrations(conn)
        self._writers.start()

    async def close(self) -> None:
        reads, self._reads = self._reads, None
        await asyncio.to_thread(self._writers.stop)
        if reads is not None:
            await reads.close()

    async def write(self, fn: WriteFn[T]) -> T:
        return await self._writers.run(fn)

    async def one(self, query: str, /, **params: Any) -> Row | None:
        rows = await self._read(QUERIES[query], params)
        return rows[0] if rows else None

    async def all(self, query: str, /, **params: Any) -> list[Row]:
        return await self._read(QUERIES[query], params)

    async def ping(self) -> None:
        await self._read("SELECT 1", None)

    async def _read(self, sql: str, params: dict[str, Any] | None) -> list[Row]:
        """Every row of `sql` on a pooled connection. A connection the server dropped while it sat in the pool
        is discarded and the read runs again, on another (a read has no effect to repeat)."""
        for attempt in range(self._read_size + 1):
            reads = self._reads
            if reads is None:
                raise DatabaseClosed("database is not open")
            try:
                async with reads.connection() as conn:
                    try:
                        cur = await conn.execute(sql, params)
                        return list(await cur.fetchall())
                    except psycopg.OperationalError:
                        if conn.broken and attempt < self._read_size:
                            continue
                        raise
            except (psycopg.Error, PoolClosed) as exc:
                raise chained(exc, self._url) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def write_scrubbed(self, fn: WriteFn[T]) -> T:
        """`base.Database.write_scrubbed` as far as PostgreSQL allows. `fn` runs in a transaction of its own on
        a connection of its own; before it commits, the tables whose rows it updated or deleted are read from
        `pg_stat_xact_user_tables`, and once it committed each gets a `VACUUM`, which removes the old row
        versions from the tables' pages (and their TOAST and index entries).

        PostgreSQL has no `secure_delete`: what stays is (1) the bytes of removed row versions in page space
        VACUUM freed but did not zero, until new rows reuse it; (2) the write-ahead log segments holding the
        old rows (and full-page images of them), until PostgreSQL recycles them after later checkpoints, and
        any WAL archive, base backup or replica made meanwhile; (3) everything, if a transaction older than
        this one is still open when VACUUM runs (it then cannot remove what that transaction may still see).
        A VACUUM the role may not run is logged and skipped. For secrets at rest on PostgreSQL, encrypt the
        storage (and the backups)."""
        if self._reads is None:
            raise DatabaseClosed("database is not open")
        return await asyncio.to_thread(_write_scrubbed, self._url, fn)

    # --- several processes on one database ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watching(self, on_change: Callable[[], None]) -> AsyncIterator[None]:
        """`base.Database.watching`: a connection of its own LISTENs to the channels the writers NOTIFY after
        committed task and event inserts, and calls `on_change()` per notification. If that connection drops,
        it reconnects with backoff, and calls `on_change()` once listening again (it may have missed some). The
        block starts once the first connection attempt is over (listening, unless the server was unreachable:
        then it keeps trying in the background)."""
        if self._reads is None:
            raise DatabaseClosed("database is not open")
        ready = asyncio.Event()
        listener = asyncio.create_task(self._listen(on_change, ready), name="receiver-listen")
        try:
            await ready.wait()
            yield
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self, on_change: Callable[[], None], ready: asyncio.Event) -> None:
        delay_s, listened = RECONNECT_MIN_S, False
        while True:
            try:
                async with await connect_async(self._url) as conn:
                    for channel in CHANNELS:
                        await conn.execute(f"LISTEN {channel}")
                    if listened:
                        on_change()
                    listened = True
                    ready.set()
                    delay_s = RECONNECT_MIN_S
                    async for _ in conn.notifies():
                        on_change()
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost (%s); reconnecting in %.1f s", self._redacted(exc), delay_s)
            ready.set()
            await asyncio.sleep(delay_s)
            delay_s = min(2 * delay_s, RECONNECT_MAX_S)

    @contextlib.asynccontextmanager
    async def alive(self, owner: str) -> AsyncIterator[None]:
        """`base.Database.alive`: a connection of its own holds a session advisory lock on a key hashed from
        `owner` for the block's length. A killed process's connection ends and its locks with it, so
        `dead_owners` sees it dead as soon as the server notices (at once for a killed process on a live
        host: the kernel closes its socket). Every `alive_check_s` the connection is checked; one the server
        dropped is replaced (with backoff) and the lock taken again. Raises a `StorageError` if the first
        lock cannot be taken."""
        if self._reads is None:
            raise DatabaseClosed("database is not open")
        try:
            conn = await connect_async(self._url)
            await conn.execute(_TAKE_ALIVE, {"owner": owner})
        except psycopg.Error as exc:
            raise chained(exc, self._url) from exc
        holder = asyncio.create_task(self._hold_alive(conn, owner), name="receiver-alive")
        try:
            yield
        finally:
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder

    async def _hold_alive(self, conn: psycopg.AsyncConnection[dict[str, Any]], owner: str) -> None:
        delay_s = RECONNECT_MIN_S
        try:
            while True:
                await asyncio.sleep(self._alive_check_s if not conn.closed else delay_s)
                try:
                    if conn.closed:
                        conn = await connect_async(self._url)
                        await conn.execute(_TAKE_ALIVE, {"owner": owner})
                        delay_s = RECONNECT_MIN_S
                    else:
                        await conn.execute("SELECT 1")
                except psycopg.Error as exc:
                    log.warning("liveness lock of %s lost (%s); taking it again", owner, self._redacted(exc))
                    await conn.close()
                    delay_s = min(2 * delay_s, RECONNECT_MAX_S)
        finally:
            # Released here, not by closing: the server ends a closed session's locks a moment later, and the
            # owner must be dead for everyone once its block has ended.
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("SELECT pg_advisory_unlock_all()")
            await conn.close()

    async def dead_owners(self, owners: Collection[str]) -> set[str]:
        """`base.Database.dead_owners`: those of `owners` whose advisory lock no session of this database
        holds."""
        if not owners:
            return set()
        rows = await self._read(_DEAD_OWNERS, {"owners": sorted(set(owners))})
        return {row["owner"] for row in rows}

    def _redacted(self, exc: Exception) -> str:
        return self._url.redact(str(exc).strip() or type(exc).__name__)


def _write_scrubbed(url: DatabaseUrl, fn: WriteFn[T]) -> T:
    try:
        with connect(url) as conn:
            with conn.transaction():
                tx = PostgresTransaction(conn.cursor())
                result = fn(tx)
                touched = conn.execute(_TOUCHED_TABLES).fetchall()
            if tx.channels:
                with contextlib.suppress(psycopg.Error):  # committed; the listeners' poll backstops a wake-up
                    conn.execute(notify_statement(tx.channels))
            for row in touched:
                table = pg_sql.Identifier(row["schemaname"], row["relname"])
                try:
                    conn.execute(pg_sql.SQL("VACUUM {}").format(table))
                except psycopg.Error as exc:
                    log.warning("could not VACUUM %s after a scrubbed write: %s", row["relname"], url.redact(str(exc)))
            return result
    except psycopg.Error as exc:
        raise chained(exc, url) from exc
