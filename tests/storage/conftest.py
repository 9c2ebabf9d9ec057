"""The storage contract's fixtures: a migrated `Database` of every backend, and jobs to hang rows on.

The contract tests (every `test_*.py` here but `test_sqlite*.py`, the SQLite backend's own,
`test_backends.py`, which backend a URL names, and `test_sql_blocks.py`, the SQL dialects against the
stores) use only `receiver.storage.base`, the per-table stores and the transitions built on them, never a
driver, so a new backend joins them by adding itself to `BACKENDS`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from receiver.storage.base import Database
from receiver.storage.postgres import Database as PostgresDatabase
from receiver.storage.sqlite import Database as SqliteDatabase
from tests.helpers.storage_rows import T0, AddJob, insert_job


def sqlite_database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    return SqliteDatabase(tmp_path / "receiver.db")


def postgres_database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """On a fresh database of this pytest process's PostgreSQL server (`tests.helpers.postgres`)."""
    return PostgresDatabase(request.getfixturevalue("postgres_url"))


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Database]] = {
    "sqlite": sqlite_database,
    "postgres": postgres_database,
}


@pytest.fixture(params=sorted(BACKENDS))
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An open, migrated, empty database of each backend in turn."""
    db = BACKENDS[request.param](request, tmp_path)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
def add_job(database: Database) -> AddJob:
    """Insert a pending job (`job_<n>` unless `job_id` is given; fal unless `provider` is) and return its id."""
    made: list[str] = []

    async def add(job_id: str | None = None, *, provider: str = "fal", now: float = T0, **fields: Any) -> str:
        job_id = job_id or f"job_{len(made) + 1:04d}"
        made.append(job_id)
        await database.write(lambda tx: insert_job(tx, job_id, provider=provider, now=now, **fields))
        return job_id

    return add
