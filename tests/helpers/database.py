"""A test's own look at the database: rows read from the file by a read-only sqlite3 connection (or, for a
PostgreSQL URL, by a psycopg connection of the test's own), the
queries a `Database`'s writes run, a file made to look older than this version, and rows seeded through the
stores that the product only writes over time.

The receiver reads and writes through its stores (`receiver.storage`); a test that checks what they left on
disk reads the file itself, with SQL of its own, so that it never depends on the code it checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from receiver.settings import Settings
from receiver.storage import events
from receiver.storage.base import Database, Row, Transaction, WriteFn

# Where a test reads: a SQLite file's path, or a PostgreSQL URL (`postgresql://` / `postgres://`).
Where = Path | str


class PgRow(tuple[Any, ...]):
    """A PostgreSQL row as `sqlite3.Row` reads: by position, by column name, and `dict(row)`."""

    names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> Sequence[str]:
        return self.names


def where(settings: Settings) -> Where:
    """What `rows` reads for these settings: the SQLite file, or the PostgreSQL URL."""
    return settings.database_path if settings.is_sqlite else settings.database_url


def rows(path: Where, sql: str, *params: Any) -> list[Any]:
    """Every row of `sql` (`?` placeholders) on the database file at `path`, or on the PostgreSQL database when
    `path` is its URL (rows index by position and by column name)."""
    if isinstance(path, str):
        return _pg_rows(path, sql, params)
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, params).fetchall()


def _pg_rows(url: str, sql: str, params: Sequence[Any]) -> list[PgRow]:
    text = sql.replace("%", "%%").replace("?", "%s")  # the test's own SQL, `?` placeholders as sqlite3's
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(text.encode(), tuple(params))
        names = tuple(column.name for column in cur.description or ())
        row_type = type("Row", (PgRow,), {"names": names})
        return [row_type(row) for row in cur.fetchall()]


def event_types(path: Where, job_id: str) -> list[str]:
    """The types of the events recorded for a job, oldest first."""
    return [row[0] for row in rows(path, "SELECT type FROM events WHERE job_id = ? ORDER BY seq", job_id)]


async def read_rows(path: Where, sql: str, *params: Any) -> list[Any]:
    """`rows`, off the event loop (so that a test polling it lets the receiver run meanwhile)."""
    return await asyncio.to_thread(rows, path, sql, *params)


async def count_rows(path: Where, table: str, where: str = "", *params: Any) -> int:
    """How many rows of `table` there are (that match `where`, with `params`, when given)."""
    sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")  # noqa: S608 (the test's own names)
    [row] = await read_rows(path, sql, *params)
    return int(row[0])


def forget_newest_migration(path: Path) -> int:
    """Make the database file at `path` look one migration behind this version (its record of the newest
    migration goes: the storage API cannot undo a migration); returns that migration's number."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        [(newest,)] = conn.execute("SELECT MAX(number) FROM schema_migrations").fetchall()
        conn.execute("DELETE FROM schema_migrations WHERE number = ?", (newest,))
        conn.commit()
    return int(newest)


def add_delivery(
    tx: Transaction, delivery_id: str, *, event_id: str, target: str, url: str, status: str, attempts: int, now: float
) -> None:
    """Seed, through the events store, a callback delivery of an event already in `status` after `attempts`
    attempts (its webhook id: `msg_<delivery id>`)."""
    events.insert_delivery(
        tx, delivery_id, event_id=event_id, subscription_id=None, target=target, url=url,
        webhook_id=f"msg_{delivery_id}", now=now,
    )  # fmt: skip
    events.update_delivery(
        tx, delivery_id, status=status, attempted=attempts, last_error=None, next_attempt_at=None,
        delivered_at=None, now=now,
    )  # fmt: skip


class _Recording:
    """A `Transaction` that notes the name of every query it runs."""

    def __init__(self, tx: Transaction, names: list[str]) -> None:
        self._tx, self._names = tx, names

    def execute(self, query: str, /, **params: Any) -> int:
        self._names.append(query)
        return self._tx.execute(query, **params)

    def one(self, query: str, /, **params: Any) -> Row | None:
        self._names.append(query)
        return self._tx.one(query, **params)

    def all(self, query: str, /, **params: Any) -> list[Row]:
        self._names.append(query)
        return self._tx.all(query, **params)

    def value(self, query: str, /, **params: Any) -> Any:
        self._names.append(query)
        return self._tx.value(query, **params)


@contextlib.contextmanager
def recorded_queries(db: Database) -> Iterator[list[str]]:
    """The names of the queries `db`'s writes run while the block lasts, in order."""
    names: list[str] = []
    write = db.write

    async def recording(fn: WriteFn[Any]) -> Any:
        return await write(lambda tx: fn(_Recording(tx, names)))

    db.write = recording  # type: ignore[method-assign]
    try:
        yield names
    finally:
        del db.write
