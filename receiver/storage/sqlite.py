"""SQLite plumbing: named SQL blocks, numbered migrations, a group-committing writer and a read connection.

Every write goes through one thread that owns the only writing connection. `Database.write` hands it
a transaction body; the thread runs whatever has queued up meanwhile inside one transaction (each body
in its own SAVEPOINT, so one failure rolls back only its own work), commits once with `synchronous=FULL`,
and only then resolves the callers' futures. So every acknowledged write is on disk, and a burst of N
webhooks costs one fsync instead of N. Reads run on a second, read-only connection.

The writer, the reader and the SQL text are this module's own: the rest of the receiver sees the
`receiver.storage.base` interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from receiver.storage import base, sqlfiles, sqlite_peers
from receiver.storage.base import (
    DatabaseClosed,
    IntegrityViolation,
    Row,
    SchemaBehind,
    StorageError,
    UniqueViolation,
    WriteFn,
)
from receiver.support.batching import settle, settle_all, take_batch
from receiver.support.private_paths import make_private_dirs, make_private_file, tighten_file

log = logging.getLogger(__name__)
T = TypeVar("T")
ConnFn = Callable[[sqlite3.Connection], T]
MAX_BATCH = 512
BUSY_TIMEOUT_S = 30.0  # how long a write waits for another process's write lock before it fails
BUSY_SLEEP_S = 0.0005  # the writer's retry step while another process holds the write lock


def load_queries() -> dict[str, str]:
    """The named blocks of `receiver/storage/sql/sqlite/` (see `receiver.storage.sqlfiles`)."""
    return sqlfiles.load_queries("sqlite")


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every migration file, in order."""
    return sqlfiles.migrations("sqlite")


def connect(path: Path) -> sqlite3.Connection:
    """A WAL connection to `path`. The file is created 0600 before SQLite opens it (and tightened if an older
    version left it readable by others): SQLite creates `-wal` and `-shm` with the database file's own
    permission bits whatever the umask, so they are owner-only too."""
    make_private_dirs(path.parent)
    # Never open and close the database file itself once it exists: closing ANY descriptor of a file drops
    # every POSIX lock this process holds on it, SQLite's included, and another process closing its last
    # connection would then delete the `-wal` and `-shm` under our open connections. Only a missing file is
    # created (nobody can have it open); an existing one is tightened by path.
    if path.exists():
        tighten_file(path)
    else:
        make_private_file(path)
    for suffix in ("-wal", "-shm"):
        tighten_file(path.with_name(path.name + suffix))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def apply_migrations(conn: sqlite3.Connection) -> list[int]:
    """Apply every migration not yet recorded; returns the numbers applied now."""
    conn.execute(_QUERIES["create_schema_migrations"])
    done = {row[0] for row in conn.execute(_QUERIES["applied_migrations"])}
    applied = []
    for number, name, sql in migrations():
        if number in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_statements(sql):
                conn.execute(statement)
            conn.execute(_QUERIES["record_migration"], {"number": number, "name": name})
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(number)
    return applied


def migrate(path: Path) -> list[int]:
    """Create or upgrade the database at `path` (see `apply_migrations`); the numbers applied now. A driver
    failure is raised as a `StorageError`."""
    try:
        conn = connect(path)
        try:
            return apply_migrations(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _translate(exc) from exc


def _split_statements(sql: str) -> list[str]:
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not buffer.strip().startswith("--"):
        statements.append(buffer.strip())
    return statements


_QUERIES = load_queries()


def _translate(exc: sqlite3.Error) -> StorageError:
    """The storage-level error for a driver error (the driver's is kept as `__cause__`)."""
    if isinstance(exc, sqlite3.IntegrityError):
        unique = getattr(exc, "sqlite_errorname", "") in {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
        return (UniqueViolation if unique else IntegrityViolation)(str(exc))
    return StorageError(str(exc))


class SqliteTransaction:
    """`receiver.storage.base.Transaction` over the writer's connection, inside the writer's transaction."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    # Each method runs its statement itself (no shared helper): this is the ingest path, once per statement.
    def execute(self, query: str, /, **params: Any) -> int:
        try:
            return self._conn.execute(_QUERIES[query], params).rowcount
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    def execute_later(self, query: str, /, **params: Any) -> None:
        # One writer at a time, in-process: nothing to gain by waiting, so it runs at once.
        try:
            self._conn.execute(_QUERIES[query], params)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    def execute_at_commit(self, query: str, /, **params: Any) -> None:
        # SQLite's writer commits in the order it writes: nothing is held longer by running it now.
        try:
            self._conn.execute(_QUERIES[query], params)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    def one(self, query: str, /, **params: Any) -> Row | None:
        try:
            row = self._conn.execute(_QUERIES[query], params).fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        return None if row is None else dict(row)

    def all(self, query: str, /, **params: Any) -> list[Row]:
        try:
            rows = self._conn.execute(_QUERIES[query], params).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        return [dict(row) for row in rows]

    def value(self, query: str, /, **params: Any) -> Any:
        row = self.one(query, **params)
        return None if row is None else next(iter(row.values()))


class _Item:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: ConnFn[Any], future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn, self.future, self.loop = fn, future, loop


class _Writer:
    """The single writer thread; `await writer.run(fn)` returns once `fn`'s work is committed."""

    def __init__(self, path: Path, *, background: bool = False) -> None:
        self._path = path
        self._background = background
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.commits = 0
        self.writes = 0
        self.lock_waits = 0  # batches that found the write lock taken by another connection
        self.lock_wait_s = 0.0  # and how long they waited for it, in all

    def start(self) -> None:
        conn = connect(self._path)
        try:
            apply_migrations(conn)
        except BaseException:
            conn.close()
            raise
        if not self._background:
            # The writer waits for another process's write lock in `_begin`, in short steps, not in SQLite's
            # busy handler (which sleeps 1, 2, 5, ... up to 100 ms between tries): see `_begin`.
            conn.execute("PRAGMA busy_timeout=0")
        self._thread = threading.Thread(target=self._loop, args=(conn,), name="receiver-writer", daemon=True)
        self._thread.start()

    async def run(self, fn: ConnFn[T]) -> T:
        if self._thread is None:
            raise DatabaseClosed("database is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Item(fn, future, loop))
        return await future

    async def stop(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _loop(self, conn: sqlite3.Connection) -> None:
        try:
            stop = False
            while not stop:
                batch, stop = take_batch(self._queue, MAX_BATCH)
                if batch:
                    stop = self._commit_batch(conn, batch, stop)
        finally:
            conn.close()
            self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        """Writes queued after the stop signal are refused, never left waiting forever."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                closed = DatabaseClosed("database is not open (closed before this write ran)")
                item.loop.call_soon_threadsafe(settle, item.future, False, closed)

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Item], stop: bool) -> bool:
        """Run `batch` in one transaction and settle its callers; returns `stop`, or True when the stop signal
        was taken while topping the batch up."""
        outcomes: list[tuple[bool, Any]] = []
        try:
            if self._begin(conn) and not stop:
                # The lock was another process's for a while: what queued up meanwhile joins this commit
                # rather than waiting for the lock again behind it.
                stop = self._top_up(batch)
            for item in batch:
                conn.execute("SAVEPOINT item")
                try:
                    result = item.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO item")
                    conn.execute("RELEASE item")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE item")
                    outcomes.append((True, result))
            conn.execute("COMMIT")
        except Exception as exc:  # the commit itself failed: nothing in the batch is durable
            log.exception("write batch of %d failed", len(batch))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # One exception per caller (each raise adds to its traceback), the driver's translated.
            outcomes = [(False, _batch_error(exc)) for _ in batch]
        self.commits += 1
        self.writes += len(batch)
        # One wake-up per event loop per batch (not one self-pipe write per item).
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for item, (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(item.loop, []).append((item.future, ok, value))
        for loop, settled in by_loop.items():
            loop.call_soon_threadsafe(settle_all, settled)
        return stop

    def _begin(self, conn: sqlite3.Connection) -> bool:
        """`BEGIN IMMEDIATE`, waiting while another process (the web process or its worker child) holds the
        write lock, for `BUSY_TIMEOUT_S` at most; returns whether it had to wait.

        Two writers of one file take turns unequally, on purpose. The foreground writer (the web process's:
        it holds webhooks whose 2xx waits for the commit) retries every `BUSY_SLEEP_S`, so it takes the lock
        within half a millisecond of its release. A `background` writer (the worker's) waits in SQLite's busy
        handler, which sleeps in growing steps (1, 2, 5, 10, ... 100 ms): under contention it comes back
        rarely, and takes everything its callers queued meanwhile in one commit (`_top_up`). With both in
        SQLite's handler (before), a webhook's `BEGIN IMMEDIATE` waited p99 155-645 ms under load; with both
        retrying briefly, the worker took the lock as often as the web process did. Only `BEGIN` can meet the
        lock: once it holds it, a batch's statements cannot be busy (WAL)."""
        if self._background:
            started = time.monotonic()
            conn.execute("BEGIN IMMEDIATE")  # the busy handler's wait (`busy_timeout`)
            waited = time.monotonic() - started
            if waited < BUSY_SLEEP_S:
                return False
            self.lock_waits += 1
            self.lock_wait_s += waited
            return True
        try:
            conn.execute("BEGIN IMMEDIATE")
            return False
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        self.lock_waits += 1
        started = time.monotonic()
        try:
            while True:
                time.sleep(BUSY_SLEEP_S)
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return True
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() - started >= BUSY_TIMEOUT_S:
                        raise
        finally:
            self.lock_wait_s += time.monotonic() - started

    def _top_up(self, batch: list[_Item]) -> bool:
        """Add what is queued to `batch`, up to `MAX_BATCH` items; True when the stop signal was taken."""
        while len(batch) < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            batch.append(item)
        return False


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


def _batch_error(exc: Exception) -> Exception:
    """What a caller of a failed batch gets: the driver's error as a `StorageError` (it as the cause)."""
    if not isinstance(exc, sqlite3.Error):
        return exc
    error = _translate(exc)
    error.__cause__ = exc
    return error


class Database(base.Database):
    """The writer plus one aiosqlite connection for reads (WAL lets them run beside the writer).

    `background`: this process's writes may wait for another process's (the worker's for the web process's,
    see `_Writer._begin`)."""

    def __init__(self, path: Path, *, background: bool = False) -> None:
        self.path = path
        self._writer = _Writer(path, background=background)
        self._reader: aiosqlite.Connection | None = None

    @property
    def commits(self) -> int:  # type: ignore[override]
        return self._writer.commits

    @property
    def writes(self) -> int:  # type: ignore[override]
        return self._writer.writes

    async def open(self) -> None:
        """Migrate, then open the writer and the reader. A driver error is raised as a `StorageError`, and
        leaves nothing open."""
        try:
            await asyncio.to_thread(self._writer.start)
            self._reader = await aiosqlite.connect(self.path)
            self._reader.row_factory = sqlite3.Row
            await self._reader.execute("PRAGMA query_only=ON")
        except Exception as exc:
            await self.close()
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc) from exc
            raise

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        await self._writer.stop()

    async def write(self, fn: WriteFn[T]) -> T:
        return await self._writer.run(lambda conn: fn(SqliteTransaction(conn)))

    async def one(self, query: str, /, **params: Any) -> Row | None:
        rows = await self.all(query, **params)
        return rows[0] if rows else None

    async def all(self, query: str, /, **params: Any) -> list[Row]:
        try:
            return [dict(row) for row in await self._read(_QUERIES[query], params)]
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def ping(self) -> None:
        try:
            await self._read("SELECT 1")
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def _read(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """Every row of `sql` on the read connection (driver errors untranslated)."""
        if self._reader is None:
            raise DatabaseClosed("database is not open")
        # Execute and fetch in one call on the reader's thread: a caller cancelled mid-read must never leave
        # a half-read statement open, whose read transaction would pin every later read to a stale snapshot.
        return list(await self._reader.execute_fetchall(sql, params))

    async def write_scrubbed(self, fn: WriteFn[T]) -> T:
        """`base.Database.write_scrubbed`: `fn` runs on a connection of its own with `secure_delete` on
        (SQLite zeroes what the transaction frees or overwrites), and when it changed anything the WAL is
        checkpointed and truncated, so the old page images leave the file too. Not through the writer: its
        batches share one transaction and a checkpoint cannot run inside one; SQLite's write lock orders the
        two."""
        if self._reader is None:
            raise DatabaseClosed("database is not open")
        return await asyncio.to_thread(_write_scrubbed, self.path, fn)

    # --- several processes on one file (see `receiver.storage.sqlite_peers`) -------------------------

    @contextlib.asynccontextmanager
    async def watching(self, on_change: Callable[[], None]) -> AsyncIterator[None]:
        """`base.Database.watching`: a thread polls `PRAGMA data_version` every few ms on a connection of its
        own and calls `on_change` in this event loop when it moved."""
        loop = asyncio.get_running_loop()

        def changed() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under a stray last call
                loop.call_soon_threadsafe(on_change)

        watcher = sqlite_peers.CommitWatcher(self.path, changed)
        try:
            await asyncio.to_thread(watcher.start)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        try:
            yield
        finally:
            await asyncio.to_thread(watcher.stop)

    @contextlib.asynccontextmanager
    async def alive(self, owner: str) -> AsyncIterator[None]:
        """`base.Database.alive`: an flock on `owner`'s file in `<database file>.owners/`, which the kernel
        releases when this process ends, however it ends."""
        fd = sqlite_peers.hold_owner(self.path, owner)
        try:
            yield
        finally:
            sqlite_peers.drop_owner(self.path, owner, fd)

    async def dead_owners(self, owners: Collection[str]) -> set[str]:
        """`base.Database.dead_owners`: those whose file in `<database file>.owners/` is missing or unlocked
        (their stale files are removed)."""
        return sqlite_peers.dead_owners(self.path, owners)


def _write_scrubbed(path: Path, fn: WriteFn[T]) -> T:
    try:
        conn = connect(path)
    except sqlite3.Error as exc:
        raise _translate(exc) from exc
    try:
        conn.execute("PRAGMA secure_delete=ON")
        changes = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(SqliteTransaction(conn))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if conn.total_changes != changes:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return result
    except sqlite3.Error as exc:
        raise _translate(exc) from exc
    finally:
        conn.close()


@contextlib.contextmanager
def open_read_only(path: Path) -> Iterator[SqliteTransaction]:
    """Reads of the database at `path` that never migrate, create, write or chmod a file (SQLite `mode=ro`),
    so they work on a copy or as a user who may only read; for the block's length. Raises `SchemaBehind`
    when the file lacks migrations of this version, a `StorageError` when it cannot be read."""
    try:
        conn = _connect_read_only(path)
    except sqlite3.Error as exc:
        raise _translate(exc) from exc
    try:
        conn.row_factory = sqlite3.Row
        missing = _missing_migrations(conn)
        if missing:
            raise SchemaBehind(tuple(missing))
        yield SqliteTransaction(conn)
    except sqlite3.Error as exc:
        raise _translate(exc) from exc
    finally:
        conn.close()


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A `mode=ro` connection. A WAL database that no server has open (no `-wal` file) in a directory this user
    may not write (so its `-shm` cannot be created) is read as `immutable`: no one is writing it."""
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
        done = {row[0] for row in conn.execute(_QUERIES["applied_migrations"])}
    except sqlite3.OperationalError:
        done = set()  # no schema_migrations table: a database never migrated
    return [number for number, _, _ in migrations() if number not in done]
