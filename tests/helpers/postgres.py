"""PostgreSQL for the tests: one throwaway server per pytest process, and a fresh migrated database per test.

`postgres_cluster` (session scope) starts a `bench.postgres.PostgresCluster` the first time a test asks for
PostgreSQL: one per pytest process, so under pytest-xdist one per worker (each worker is a process with its
own session). It runs without fsync for speed. `postgres_template` migrates one database once; `postgres_url`
gives each test its own copy of it (`CREATE DATABASE ... TEMPLATE`, a few tens of ms), dropped after the test;
`empty_postgres_url` a database never migrated. `pg_rows` reads with the test's own SQL and connection.

Not pytest-postgresql: its executor runs `pg_ctl` as the current user, and the Debian server binaries refuse
to run as root, which is how CI runs the suite; `PostgresCluster` switches to the `postgres` user for them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from bench.postgres import PostgresCluster
from receiver.storage import backends

TEMPLATE = "receiver_template"
_names = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of this pytest process (fsync off), stopped and removed at the end of the session."""
    with PostgresCluster(durable=False) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_template(postgres_cluster: PostgresCluster) -> str:
    """The name of a database with every migration applied, that nobody stays connected to (a template)."""
    backends.migrate(postgres_cluster.create_database(TEMPLATE))
    return TEMPLATE


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster, postgres_template: str) -> Iterator[str]:
    """The URL (with a password) of a fresh, migrated database of the test's own; dropped after it."""
    name = f"test_{next(_names)}"
    url = postgres_cluster.create_database(name, template=postgres_template)
    try:
        yield url
    finally:
        postgres_cluster.drop_database(name)


@pytest.fixture
def empty_postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """The URL of a fresh database with no migration applied (nothing in it); dropped after the test."""
    name = f"empty_{next(_names)}"
    url = postgres_cluster.create_database(name)
    try:
        yield url
    finally:
        postgres_cluster.drop_database(name)


def pg_rows(url: str, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every row of `sql` (none for a statement that returns none) on the database at `url`, run by the test's
    own connection (autocommit)."""
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(sql.encode(), params)
        return cur.fetchall() if cur.description is not None else []


async def read_pg_rows(url: str, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`pg_rows`, off the event loop (so that a test polling it lets the receiver run meanwhile)."""
    return await asyncio.to_thread(pg_rows, url, sql, params)
