"""The backend a database URL names: the one place that picks one, so nothing above `receiver/storage/` does.

`sqlite:///relative/file.db` or `sqlite:////absolute/file.db`: `receiver.storage.sqlite`, the embedded default.
`postgresql://user:password@host:port/database` (or `postgres://`): `receiver.storage.postgres`, imported only
then (SQLite users never load psycopg). A new backend adds its scheme here, and the receiver's wiring, CLI and
purge follow. No error here ever echoes a URL: it may hold a password.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from receiver.storage import sqlite
from receiver.storage.base import Database, Transaction

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")


def _scheme(url: str) -> str:
    scheme = url.partition(":")[0] if ":" in url else ""
    if scheme != "sqlite" and scheme not in POSTGRES_SCHEMES:
        raise ValueError(f"no storage backend for database URLs of scheme {scheme!r} (known: sqlite, postgresql)")
    return scheme


def is_sqlite(url: str) -> bool:
    """Whether `url` names a SQLite file (else a PostgreSQL database); a ValueError for an unknown scheme."""
    return _scheme(url) == "sqlite"


def sqlite_path(url: str) -> Path:
    """The SQLite file `url` names (a relative path is relative to the working directory). Another scheme
    is a ValueError naming it (never the URL itself, which may hold a password)."""
    if _scheme(url) != "sqlite":
        raise ValueError(f"a {_scheme(url)} database URL names no file")
    if not url.startswith(SQLITE_PREFIX) or url == SQLITE_PREFIX:
        raise ValueError("a SQLite database URL is sqlite:///relative/file.db or sqlite:////absolute/file.db")
    return Path(url[len(SQLITE_PREFIX) :])


def database_for(url: str, *, pool_size: int | None = None, background: bool = False) -> Database:
    """The database `url` names, not yet opened (`open` migrates it; `close` when done). `pool_size`: the
    connections a PostgreSQL database keeps (`RECEIVER_DATABASE_POOL_SIZE`; SQLite ignores it). `background`:
    the worker role's, whose SQLite writes leave the write lock to the web process's (PostgreSQL ignores it)."""
    if is_sqlite(url):
        return sqlite.Database(sqlite_path(url), background=background)
    from receiver.storage import postgres

    return postgres.Database(url, pool_size=pool_size or postgres.DEFAULT_POOL_SIZE)


@contextlib.asynccontextmanager
async def open_database(url: str, *, pool_size: int | None = None) -> AsyncIterator[Database]:
    """The database `url` names, opened (and migrated) for the length of the block and closed after: for a
    one-shot command. Driver errors come out as `StorageError`s, as from every `Database`."""
    db = database_for(url, pool_size=pool_size)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


def migrate(url: str) -> list[int]:
    """Create or upgrade the database `url` names; the numbers of the migrations applied now (PostgreSQL: under
    an advisory lock, so processes migrating at once apply each migration once). A driver failure is raised as
    a `StorageError`."""
    if is_sqlite(url):
        return sqlite.migrate(sqlite_path(url))
    from receiver.storage import postgres

    return postgres.migrate(url)


@contextlib.contextmanager
def open_read_only(url: str) -> Iterator[Transaction]:
    """Reads of the database `url` names that never migrate, create or write anything, for the block's
    length (PostgreSQL: one READ ONLY transaction). Raises `SchemaBehind` when it lacks migrations of this
    version, a `StorageError` when it cannot be read."""
    if is_sqlite(url):
        with sqlite.open_read_only(sqlite_path(url)) as tx:
            yield tx
        return
    from receiver.storage import postgres

    with postgres.open_read_only(url) as pg_tx:
        yield pg_tx
