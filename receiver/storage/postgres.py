"""PostgreSQL plumbing: named SQL blocks, migrations under an advisory lock, group-committing writer threads,
pooled async reads, LISTEN/NOTIFY wake-ups and advisory-lock liveness.

psycopg 3 async for reads and LISTEN, its sync API on writer threads for the sync transaction bodies. A
transaction body is a plain function that never awaits (`receiver.storage.base`), so it cannot run on an
async connection without blocking the event loop; `Database.write` queues it for a few writer threads, each
with a connection from a `psycopg_pool.ConnectionPool`. A writer takes whatever has queued meanwhile and runs
it in ONE transaction, each body in its own SAVEPOINT (one failing body rolls back only its own work), like
SQLite's group commit; a serialization failure or a deadlock anywhere in the batch rolls the batch back and
runs it again (a body may run more than once: the storage contract allows it). Reads, the health check,
LISTEN and the liveness locks use `psycopg.AsyncConnection`s (reads from a `psycopg_pool.AsyncConnectionPool`).

Queries are the `-- name: x` blocks of `receiver/storage/sql/postgres/*.sql`, their `:name` parameters turned
into psycopg's `%(name)s` once at import. Driver errors become the `receiver.storage.base` errors here, with
the primary message only (a DETAIL line may quote row values) and never the database URL (it may hold a
password). What the driver itself needs (advisory locks, LISTEN, savepoints) is in this module: it is the
backend's bookkeeping, not the receiver's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import unquote

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolClosed

from receiver.storage import base
from receiver.storage.base import (
    DatabaseClosed,
    IntegrityViolation,
    Row,
    SchemaBehind,
    StorageError,
    UniqueViolation,
    WriteFn,
)
from receiver.support.batching import take_batch

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH = 512
BATCH_ATTEMPTS = 5  # a batch that hits a serialization failure or a deadlock runs again, this many times in all
DEFAULT_POOL_SIZE = 10
OPEN_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10  # libpq's connect_timeout, unless the URL sets one
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.2, 5.0  # backoff of the LISTEN and liveness connections
ALIVE_CHECK_S = 5.0  # how often a liveness connection checks that it still holds its lock
CHANNELS = ("receiver_tasks", "receiver_events")  # what the migrations' triggers NOTIFY
# The session advisory lock that serializes migrations: b"receiver" as a big-endian signed 64-bit integer.
MIGRATION_LOCK = int.from_bytes(b"receiver", "big", signed=True)

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
# What `:name` parameters may not be found in (literals, quoted identifiers, comments, `::` casts), a
# parameter, or a literal `%` (psycopg reads `%` everywhere in a query with parameters).
_TOKENS = re.compile(
    r"""(?P<skip>'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$|::)"""
    r"""|:(?P<name>[A-Za-z_]\w*)|%""",
    re.DOTALL,
)


def to_pyformat(text: str) -> str:
    """`text` with its `:name` parameters as psycopg's `%(name)s`, and every literal `%` doubled."""

    def replace(match: re.Match[str]) -> str:
        if match.group("skip") is not None:
            return match.group("skip").replace("%", "%%")
        if match.group("name") is not None:
            return f"%({match.group('name')})s"
        return "%%"

    return _TOKENS.sub(replace, text)


def load_queries() -> dict[str, str]:
    """The `-- name: x` blocks of every `.sql` file in `receiver/storage/sql/postgres/` (migrations aside), in
    psycopg's parameter style; a name defined twice is an error."""
    queries: dict[str, str] = {}
    folder = resources.files("receiver.storage.sql.postgres")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = _NAME.split(entry.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in queries:
                raise RuntimeError(f"query {name!r} is defined twice (second in {entry.name})")
            queries[name] = to_pyformat(body.strip().rstrip(";"))
    return queries


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every migration file, in order."""
    found = []
    for entry in resources.files("receiver.storage.sql.postgres.migrations").iterdir():
        match = re.match(r"^(\d+)_(\w+)\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


_QUERIES = load_queries()

# --- errors --------------------------------------------------------------------------------------------


class _Url:
    """A database URL and what must never be shown of it (its password)."""

    __slots__ = ("_secrets", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        # libpq quotes a malformed URL (or a part of it) in its error, so the password is found here by hand too.
        secrets = {url}
        _, _, rest = url.partition("://")
        for userinfo in (rest.partition("@")[0], rest.rpartition("@")[0]):
            if ":" in userinfo:
                secrets.add(userinfo.partition(":")[2])
        secrets.update(re.findall(r"[?&]password=([^&]*)", url))
        with contextlib.suppress(psycopg.Error):
            given = conninfo_to_dict(url).get("password")
            if isinstance(given, str):
                secrets.add(given)
        secrets |= {unquote(secret) for secret in secrets}
        self._secrets = sorted((secret for secret in secrets if secret), key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def connect_kwargs(self) -> dict[str, Any]:
        """libpq options the receiver sets unless the URL does."""
        try:
            given = conninfo_to_dict(self.url)
        except psycopg.Error:
            given = {}  # the connect call reports the malformed URL
        kwargs: dict[str, Any] = {}
        if "connect_timeout" not in given:
            kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in given:
            kwargs["application_name"] = "receiver"
        return kwargs

    def __repr__(self) -> str:
        return "<database URL>"


_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


def _translate(exc: Exception, url: _Url | None = None) -> Exception:
    """The storage-level error for a driver error (the caller chains the driver's as `__cause__`): its primary
    message only, the URL's password redacted. Anything else is returned as it is."""
    if isinstance(exc, PoolClosed):
        return DatabaseClosed("database is not open")
    if not isinstance(exc, psycopg.Error):
        return exc
    message = exc.diag.message_primary or str(exc).strip() or type(exc).__name__
    if url is not None:
        message = url.redact(message)
    if isinstance(exc, pg_errors.UniqueViolation):
        return UniqueViolation(message)
    if isinstance(exc, psycopg.IntegrityError):
        return IntegrityViolation(message)
    return StorageError(message)


def _chained(exc: Exception, url: _Url | None = None) -> Exception:
    """`_translate`, with the driver's error as the cause, the text of it and of every error it chains redacted
    too (libpq quotes a malformed URL)."""
    error = _translate(exc, url)
    if error is not exc:
        link: BaseException | None = exc
        while url is not None and link is not None:  # the driver chains errors of its own
            link.args = tuple(url.redact(arg) if isinstance(arg, str) else arg for arg in link.args)
            link = link.__cause__ or link.__context__
        error.__cause__ = exc
        error.__suppress_context__ = True
    return error


# --- connections ---------------------------------------------------------------------------------------


def connect(url: _Url, *, autocommit: bool = True) -> psycopg.Connection[dict[str, Any]]:
    """A sync connection, rows as dicts (driver errors untranslated)."""
    return psycopg.connect(url.url, autocommit=autocommit, row_factory=dict_row, **url.connect_kwargs())


async def connect_async(url: _Url) -> psycopg.AsyncConnection[dict[str, Any]]:
    """An async autocommit connection, rows as dicts (driver errors untranslated)."""
    return await psycopg.AsyncConnection.connect(url.url, autocommit=True, row_factory=dict_row, **url.connect_kwargs())


def apply_migrations(conn: psycopg.Connection[dict[str, Any]]) -> list[int]:
    """Apply every migration not yet recorded, each in a transaction of its own, under the session advisory
    lock that makes a second process wait until the first is done (and then find nothing to do); returns the
    numbers applied now. `conn` is in autocommit mode."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.execute(_QUERIES["create_schema_migrations"])
        done = {_first(row) for row in conn.execute(_QUERIES["applied_migrations"]).fetchall()}
        applied = []
        for number, name, sql in migrations():
            if number in done:
                continue
            with conn.transaction():
                conn.execute(sql.encode())  # no parameters: run as written, several statements at once
                conn.execute(_QUERIES["record_migration"], {"number": number, "name": name})
            applied.append(number)
            log.info("applied migration %04d_%s", number, name)
        return applied
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def migrate(url: str) -> list[int]:
    """Create or upgrade the database at `url` (see `apply_migrations`); the numbers applied now. A driver
    failure is raised as a `StorageError` (without the URL)."""
    target = _Url(url)
    try:
        with connect(target) as conn:
            return apply_migrations(conn)
    except psycopg.Error as exc:
        raise _chained(exc, target) from None


def _first(row: Row) -> Any:
    return next(iter(row.values()))


def _missing_migrations(conn: psycopg.Connection[dict[str, Any]]) -> list[int]:
    """Numbers of this version's migrations the database has not applied (all when it has none)."""
    try:
        done = {_first(row) for row in conn.execute(_QUERIES["applied_migrations"]).fetchall()}
    except pg_errors.UndefinedTable:
        done = set()  # never migrated (the transaction is aborted now: the caller raises SchemaBehind)
    return [number for number, _, _ in migrations() if number not in done]


@contextlib.contextmanager
def open_read_only(url: str) -> Iterator[PostgresTransaction]:
    """Reads of the database at `url` in one READ ONLY transaction (a consistent snapshot), which never migrates
    or writes, so they work as a role that may only read; for the block's length. Raises `SchemaBehind` when the
    database lacks migrations of this version, a `StorageError` when it cannot be read."""
    target = _Url(url)
    try:
        conn = connect(target)
    except psycopg.Error as exc:
        raise _chained(exc, target) from None
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        missing = _missing_migrations(conn)
        if missing:
            raise SchemaBehind(tuple(missing))
        yield PostgresTransaction(conn.cursor())
    except psycopg.Error as exc:
        raise _chained(exc, target) from None
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


# --- writes --------------------------------------------------------------------------------------------


class PostgresTransaction:
    """`receiver.storage.base.Transaction` over a writer's cursor, inside the writer's transaction.

    A failed statement aborts PostgreSQL's transaction: the body's later statements fail too, until the body
    returns and its savepoint is rolled back. `retry` is set when a statement hit a serialization failure or a
    deadlock, which the batch answers by running again, whatever the body made of the error."""

    __slots__ = ("_cur", "retry")

    def __init__(self, cur: psycopg.Cursor[dict[str, Any]]) -> None:
        self._cur = cur
        self.retry: Exception | None = None

    def _failed(self, exc: psycopg.Error) -> Exception:
        if isinstance(exc, _RETRYABLE):
            self.retry = exc
        return _translate(exc)

    # Each method runs its statement itself (no shared helper): this is the ingest path, once per statement.
    def execute(self, query: str, /, **params: Any) -> int:
        try:
            return self._cur.execute(_QUERIES[query], params).rowcount
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def one(self, query: str, /, **params: Any) -> Row | None:
        try:
            return self._cur.execute(_QUERIES[query], params).fetchone()
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def all(self, query: str, /, **params: Any) -> list[Row]:
        try:
            return list(self._cur.execute(_QUERIES[query], params).fetchall())
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def value(self, query: str, /, **params: Any) -> Any:
        row = self.one(query, **params)
        return None if row is None else _first(row)


class _Retry(Exception):
    """The batch must run again from the start (nothing of it was committed)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Item:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: WriteFn[Any], future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn, self.future, self.loop = fn, future, loop


class _Writers:
    """The writer threads and their pool; `await writers.run(fn)` returns once `fn`'s work is committed."""

    def __init__(self, url: _Url, count: int) -> None:
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
                item.loop.call_soon_threadsafe(_settle, item.future, False, closed)

    def _loop(self, pool: ConnectionPool[psycopg.Connection[dict[str, Any]]]) -> None:
        stop = False
        while not stop:
            batch, stop = take_batch(self._queue, MAX_BATCH)
            if batch:
                self._commit_batch(pool, batch)

    def _commit_batch(self, pool: ConnectionPool[psycopg.Connection[dict[str, Any]]], batch: list[_Item]) -> None:
        outcomes: list[tuple[bool, Any]]
        for attempt in range(1, BATCH_ATTEMPTS + 1):
            try:
                with pool.connection() as conn:
                    outcomes = _run_batch(conn, batch)
            except _Retry as retry:
                if attempt < BATCH_ATTEMPTS:
                    log.info("write batch of %d runs again (%s)", len(batch), type(retry.cause).__name__)
                    time.sleep(random.uniform(0, 0.01 * attempt))
                    continue
                outcomes = [(False, _chained(retry.cause, self._url)) for _ in batch]
            except Exception as exc:  # the commit itself failed: nothing in the batch is durable
                log.error("write batch of %d failed: %s", len(batch), self._url.redact(str(exc)))
                # One exception per caller (each raise adds to its traceback), the driver's translated.
                outcomes = [(False, _chained(exc, self._url)) for _ in batch]
            break
        with self._counts:
            self.commits += 1
            self.writes += len(batch)
        # One wake-up per event loop per batch (not one self-pipe write per item).
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for item, (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(item.loop, []).append((item.future, ok, value))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle_all, settled)


def _run_batch(conn: psycopg.Connection[dict[str, Any]], batch: list[_Item]) -> list[tuple[bool, Any]]:
    """Every body of `batch` in one transaction on `conn` (autocommit mode, so the transaction is ours to begin
    and end), each in a savepoint when there are several; the outcomes once committed. Raises `_Retry` when
    the batch must run again, a driver error when the commit failed."""
    try:
        conn.execute("BEGIN")
    except psycopg.OperationalError as exc:
        if conn.broken:  # a connection the server dropped while it sat in the pool: nothing was run yet
            raise _Retry(exc) from exc
        raise
    try:
        cur = conn.cursor()
        outcomes: list[tuple[bool, Any]] = []
        single = len(batch) == 1  # no savepoint needed: the body's failure is the transaction's
        for item in batch:
            if not single:
                cur.execute("SAVEPOINT item")
            tx = PostgresTransaction(cur)
            try:
                result = item.fn(tx)
            except Exception as exc:
                if tx.retry is not None:
                    raise _Retry(tx.retry) from exc
                if not single:
                    cur.execute("ROLLBACK TO SAVEPOINT item; RELEASE SAVEPOINT item")
                outcomes.append((False, exc))
            else:
                if tx.retry is not None:
                    raise _Retry(tx.retry)
                if not single:
                    cur.execute("RELEASE SAVEPOINT item")
                outcomes.append((True, result))
        if single and not outcomes[0][0]:
            conn.execute("ROLLBACK")
        else:
            conn.execute("COMMIT")
        return outcomes
    except _RETRYABLE as exc:  # at COMMIT (a serializable conflict, a deferred check's deadlock)
        _rollback(conn)
        raise _Retry(exc) from exc
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: psycopg.Connection[Any]) -> None:
    if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")


def _settle_all(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in settled:
        _settle(future, ok, value)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the awaiting request was cancelled; the write stands regardless
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


# --- the database --------------------------------------------------------------------------------------

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

    `pool_size` is how many connections the pools hold: up to 4 (about half) for the writer threads, the rest
    for reads; `watching` and each `alive` block hold one more while they last. `alive_check_s`: how often an
    `alive` block checks that its connection (and so its lock) is still there."""

    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE, alive_check_s: float = ALIVE_CHECK_S) -> None:
        self._url = _Url(url)
        self._alive_check_s = alive_check_s
        self._writer_count = max(1, min(4, pool_size // 2))
        self._read_size = max(1, pool_size - self._writer_count)
        self._writers = _Writers(self._url, self._writer_count)
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
            raise _chained(exc, self._url) from None

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
        rows = await self._read(_QUERIES[query], params)
        return rows[0] if rows else None

    async def all(self, query: str, /, **params: Any) -> list[Row]:
        return await self._read(_QUERIES[query], params)

    async def ping(self) -> None:
        await self._read("SELECT 1", None)

    async def _read(self, sql: str, params: dict[str, Any] | None) -> list[Row]:
        """Every row of `sql` on a pooled connection. A connection the server dropped while it sat in the pool
        is discarded and the read runs once more, on another (a read has no effect to repeat)."""
        for attempt in (1, 2):
            reads = self._reads
            if reads is None:
                raise DatabaseClosed("database is not open")
            try:
                async with reads.connection() as conn:
                    try:
                        cur = await conn.execute(sql, params)
                        return list(await cur.fetchall())
                    except psycopg.OperationalError:
                        if conn.broken and attempt == 1:
                            continue
                        raise
            except (psycopg.Error, PoolClosed) as exc:
                raise _chained(exc, self._url) from None
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
        """`base.Database.watching`: a connection of its own LISTENs to the channels the migrations' triggers
        NOTIFY on task and event inserts, and calls `on_change()` per notification. If that connection drops,
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
            raise _chained(exc, self._url) from None
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


def _write_scrubbed(url: _Url, fn: WriteFn[T]) -> T:
    try:
        with connect(url) as conn:
            with conn.transaction():
                result = fn(PostgresTransaction(conn.cursor()))
                touched = conn.execute(_TOUCHED_TABLES).fetchall()
            for row in touched:
                table = pg_sql.Identifier(row["schemaname"], row["relname"])
                try:
                    conn.execute(pg_sql.SQL("VACUUM {}").format(table))
                except psycopg.Error as exc:
                    log.warning("could not VACUUM %s after a scrubbed write: %s", row["relname"], url.redact(str(exc)))
            return result
    except psycopg.Error as exc:
        raise _chained(exc, url) from None
