"""PostgreSQL migrations under a session advisory lock, and the read-only open that refuses a schema behind."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from receiver.storage.base import SchemaBehind
from receiver.storage.postgres.driver import DatabaseUrl, PostgresTransaction, chained, connect, first_value
from receiver.storage.postgres.queries import QUERIES, migrations

log = logging.getLogger(__name__)
# The session advisory lock that serializes migrations: b"receiver" as a big-endian signed 64-bit integer.
MIGRATION_LOCK = int.from_bytes(b"receiver", "big", signed=True)


def apply_migrations(conn: psycopg.Connection[dict[str, Any]]) -> list[int]:
    """Apply every migration not yet recorded, each in a transaction of its own, under the session advisory
    lock that makes a second process wait until the first is done (and then find nothing to do); returns the
    numbers applied now. `conn` is in autocommit mode. A database that lacks nothing is only read (no lock, no
    DDL), so a role that may not create tables starts on a database an owner migrated."""
    if not missing_migrations(conn):
        return []
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.execute(QUERIES["create_schema_migrations"])
        done = {first_value(row) for row in conn.execute(QUERIES["applied_migrations"]).fetchall()}
        applied = []
        for number, name, sql in migrations():
            if number in done:
                continue
            with conn.transaction():
                conn.execute(sql.encode())  # no parameters: run as written, several statements at once
                conn.execute(QUERIES["record_migration"], {"number": number, "name": name})
            applied.append(number)
            log.info("applied migration %04d_%s", number, name)
        return applied
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def migrate(url: str) -> list[int]:
    """Create or upgrade the database at `url` (see `apply_migrations`); the numbers applied now. A driver
    failure is raised as a `StorageError` (without the URL)."""
    target = DatabaseUrl(url)
    try:
        with connect(target) as conn:
            return apply_migrations(conn)
    except psycopg.Error as exc:
        raise chained(exc, target) from exc


def missing_migrations(conn: psycopg.Connection[dict[str, Any]]) -> list[int]:
    """Numbers of this version's migrations the database has not applied (all when it has none)."""
    try:
        done = {first_value(row) for row in conn.execute(QUERIES["applied_migrations"]).fetchall()}
    except pg_errors.UndefinedTable:
        done = set()  # never migrated (inside a transaction, it is aborted now)
    return [number for number, _, _ in migrations() if number not in done]


@contextlib.contextmanager
def open_read_only(url: str) -> Iterator[PostgresTransaction]:
    """Reads of the database at `url` in one READ ONLY transaction (a consistent snapshot), which never migrates
    or writes, so they work as a role that may only read; for the block's length. Raises `SchemaBehind` when the
    database lacks migrations of this version, a `StorageError` when it cannot be read."""
    target = DatabaseUrl(url)
    try:
        conn = connect(target)
    except psycopg.Error as exc:
        raise chained(exc, target) from exc
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        missing = missing_migrations(conn)
        if missing:
            raise SchemaBehind(tuple(missing))
        yield PostgresTransaction(conn.cursor())
    except psycopg.Error as exc:
        raise chained(exc, target) from exc
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()
