"""The storage boundary: what every backend provides, and the only errors the rest of the receiver sees.

A backend (`receiver.storage.sqlite` today) owns a driver, its SQL dialect (`receiver/storage/sql/<dialect>/`)
and the translation of its driver's errors into the ones below; `receiver.storage.backends` picks the one
the database URL names. Everything above it speaks in query names and named parameters, and gets rows back
as plain mappings.

Writes are transaction bodies: plain functions of a `Transaction`, run by `Database.write`, which returns
once their work is durable. A body never awaits: a transaction is short and holds no event-loop turn, a
backend may run it on a thread, group several into one commit (SQLite's group commit), or run it again
after a serialization failure. A body that raises rolls back its own work and nothing else.

The per-table stores (`receiver.storage.jobs`, `.tasks`, ...) own the query names; code outside
`receiver/storage/` calls them, never a query by name.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Row = Mapping[str, Any]


class StorageError(Exception):
    """A storage failure the caller may want to tell apart from a bug; the driver's own is its `__cause__`."""


class UniqueViolation(StorageError):
    """An insert or update broke a unique constraint (the row exists already)."""


class IntegrityViolation(StorageError):
    """Any other broken constraint (a foreign key, a NOT NULL, a CHECK)."""


class DatabaseClosed(StorageError):
    """The database is not open (never opened, or closed, or closing): nothing was read or written."""


class SchemaBehind(StorageError):
    """The database lacks migrations of this version (`missing`, their numbers), and may not be migrated
    here (a read-only open)."""

    def __init__(self, missing: tuple[int, ...]) -> None:
        super().__init__(f"migrations {', '.join(map(str, missing))} not applied")
        self.missing = missing


class Transaction(Protocol):
    """One open transaction. Every call names a query of the backend's dialect and passes its parameters
    by name; rows come back as plain mappings of column name to value."""

    def execute(self, query: str, /, **params: Any) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    def execute_later(self, query: str, /, **params: Any) -> None:
        """Run a statement whose outcome the body does not read (no row count, no rows): a backend may send it
        without waiting for it (PostgreSQL queues it in the writer's pipeline, to travel with the next
        statement's round trip), or run it at once (SQLite). Its failure still fails this body, and only this
        one: it is raised here, by a later statement of the body, or, once the body has returned, instead of
        its result (its work rolled back). So a body never catches the error of a statement run this way, nor
        reads back what it wrote before one of `one`, `all`, `value`, `execute` has run after it."""
        ...

    def execute_at_commit(self, query: str, /, **params: Any) -> None:
        """Run a statement like `execute_later`, but as late as the backend can: PostgreSQL sends it after
        every body of the batch, just before COMMIT, for an insert that takes a lock held to the commit (the
        events' ordering lock, `insert_event`), so the lock is held for the commit and no round trip more.
        What it writes may be invisible to the rest of the transaction (a foreign key on it must be deferred);
        its failure fails this body and no other."""
        ...

    def one(self, query: str, /, **params: Any) -> Row | None:
        """The first row of a query, or None."""
        ...

    def all(self, query: str, /, **params: Any) -> list[Row]:
        """Every row of a query."""
        ...

    def value(self, query: str, /, **params: Any) -> Any:
        """The first column of the first row (None when there is no row)."""
        ...


WriteFn = Callable[[Transaction], T]


class Database(abc.ABC):
    """A database: migrated on `open`, written by transaction bodies, read by query name."""

    #: Commits made and write bodies run since `open`: a benchmark reads them (writes per commit).
    commits: int = 0
    writes: int = 0

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply every migration not yet applied; a failure is a `StorageError` and leaves nothing
        open."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish the writes already queued, refuse later ones (and later reads) with `DatabaseClosed`, and
        disconnect."""

    @abc.abstractmethod
    async def write(self, fn: WriteFn[T]) -> T:
        """Run `fn` in a transaction; returns its result once committed, or raises what it raised (its
        work rolled back). A storage-level failure is raised as a `StorageError`."""

    @abc.abstractmethod
    async def write_scrubbed(self, fn: WriteFn[T]) -> T:
        """Run `fn` like `write`, in a transaction of its own, and once it returns leave no copy of what `fn`
        overwrote or deleted anywhere in the storage (free pages, journal, write-ahead log): for a body that
        replaces secrets stored in the clear. Slow: maintenance (the start-up sweep of
        `receiver.notify.secrets`), never a request path."""

    @abc.abstractmethod
    async def one(self, query: str, /, **params: Any) -> Row | None:
        """Read: the first row of a query, or None. Reads see every write that returned before them."""

    @abc.abstractmethod
    async def all(self, query: str, /, **params: Any) -> list[Row]:
        """Read: every row of a query."""

    async def value(self, query: str, /, **params: Any) -> Any:
        """Read: the first column of the first row (None when there is no row)."""
        row = await self.one(query, **params)
        return None if row is None else next(iter(row.values()))

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise a `StorageError` unless the database answers a trivial read (the health check)."""

    # --- several processes on one database (issue 10) ------------------------------------------------
    # The defaults below suit one process alone; each backend overrides them.

    @contextlib.asynccontextmanager
    async def watching(self, on_change: Callable[[], None]) -> AsyncIterator[None]:
        """For the block's length, call `on_change()` (in this event loop, no arguments) soon after any
        process commits new tasks or events to this database: it wakes idle task runners and live streams
        in the other processes (SQLite: a cheap poll of `PRAGMA data_version`; PostgreSQL: LISTEN/NOTIFY).
        Spurious calls are allowed; callers keep a slow poll as the backstop."""
        yield

    @contextlib.asynccontextmanager
    async def alive(self, owner: str) -> AsyncIterator[None]:
        """Mark the task-lease owner `owner` alive for the block's length, in a way that ends with its process
        (SQLite: an flock on a file beside the database; PostgreSQL: a session advisory lock), so that
        `dead_owners` knows at once when a worker was killed."""
        yield

    async def dead_owners(self, owners: Collection[str]) -> set[str]:
        """Those of `owners` whose process is known to have ended without ending its `alive` block (their
        leases can be taken over at once). An owner never marked alive counts as dead."""
        return set()
