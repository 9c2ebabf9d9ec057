"""The backend a database URL names: the one place that picks one, so nothing above `receiver/storage/` does.

Today every URL is `sqlite:///relative/file.db` or `sqlite:////absolute/file.db` (the settings refuse any
other); a new backend adds its scheme here, and the receiver's wiring, CLI and purge follow.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from receiver.storage import sqlite
from receiver.storage.base import Database, Transaction

SQLITE_PREFIX = "sqlite:///"


def _sqlite_path(url: str) -> Path:
    """The SQLite file `url` names (a relative path is relative to the working directory). Another scheme
    is a ValueError naming it (never the URL itself, which may hold a password)."""
    scheme = url.partition(":")[0] if ":" in url else ""
    if scheme != "sqlite":
        raise ValueError(f"no storage backend for database URLs of scheme {scheme!r} (known: sqlite)")
    if not url.startswith(SQLITE_PREFIX) or url == SQLITE_PREFIX:
        raise ValueError("a SQLite database URL is sqlite:///relative/file.db or sqlite:////absolute/file.db")
    return Path(url[len(SQLITE_PREFIX) :])


def database_for(url: str) -> Database:
    """The database `url` names, not yet opened (`open` migrates it; `close` when done)."""
    return sqlite.Database(_sqlite_path(url))


@contextlib.asynccontextmanager
async def open_database(url: str) -> AsyncIterator[Database]:
    """The database `url` names, opened (and migrated) for the length of the block and closed after: for a
    one-shot command. Driver errors come out as `StorageError`s, as from every `Database`."""
    db = database_for(url)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


def migrate(url: str) -> list[int]:
    """Create or upgrade the database `url` names; the numbers of the migrations applied now. A driver
    failure is raised as a `StorageError`."""
    return sqlite.migrate(_sqlite_path(url))


@contextlib.contextmanager
def open_read_only(url: str) -> Iterator[Transaction]:
    """Reads of the database `url` names that never migrate, create or write anything, for the block's
    length. Raises `SchemaBehind` when it lacks migrations of this version, a `StorageError` when it cannot
    be read."""
    with sqlite.open_read_only(_sqlite_path(url)) as tx:
        yield tx
