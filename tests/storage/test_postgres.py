"""The PostgreSQL backend's own behaviour, on a real server (`tests.helpers.postgres`): parameters, error
translation without the URL's password, dropped connections, a deadlocked batch run again, the scrubbed
write, the pool's bound."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from bench.postgres import PostgresCluster
from receiver.storage import backends, jobs, subscriptions
from receiver.storage.base import StorageError, Transaction, UniqueViolation
from receiver.storage.postgres import Database, to_pyformat
from tests.helpers.postgres import pg_rows, read_pg_rows
from tests.helpers.processes import free_port
from tests.helpers.storage_rows import T0, insert_job

SECRET = "PlaintextSecretValue-7Hq2Zx"


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[Database]:
    database = Database(postgres_url)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM t WHERE id = :id AND n > :n", "SELECT * FROM t WHERE id = %(id)s AND n > %(n)s"),
        ("SELECT :ids::jsonb, x::text", "SELECT %(ids)s::jsonb, x::text"),
        ("SELECT ':not_a_param', \"col:x\" FROM t", "SELECT ':not_a_param', \"col:x\" FROM t"),
        ("SELECT 1 -- :no\n, /* :nor */ :yes", "SELECT 1 -- :no\n, /* :nor */ %(yes)s"),
        ("SELECT 'it''s :x', :y", "SELECT 'it''s :x', %(y)s"),
        ("SELECT * FROM t WHERE s LIKE 'a%' AND n % 2 = :r", "SELECT * FROM t WHERE s LIKE 'a%%' AND n %% 2 = %(r)s"),
        ("SELECT $$ :x % $$, :y", "SELECT $$ :x %% $$, %(y)s"),
    ],
    ids=["plain", "casts", "quoted", "comments", "escaped-quote", "percent", "dollar-quoted"],
)
def test_parameters_become_psycopg_placeholders(sql: str, expected: str) -> None:
    """`:name` becomes `%(name)s` outside literals, identifiers, comments and `::` casts; a literal `%` doubles."""
    assert to_pyformat(sql) == expected


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port}"))


async def open_kind(kind: str, url: str) -> None:
    if kind == "open":
        async with backends.open_database(url):
            pass
    elif kind == "migrate":
        await asyncio.to_thread(backends.migrate, url)
    else:
        with backends.open_read_only(url):
            pass


def assert_hidden(error: BaseException, secret: str, caplog: pytest.LogCaptureFixture) -> None:
    """Neither the error, nor any error it chains, nor any log record, shows `secret`."""
    seen: BaseException | None = error
    while seen is not None:
        assert secret not in str(seen) and secret not in repr(seen)
        seen = seen.__cause__ or seen.__context__
    assert secret not in caplog.text


@pytest.mark.parametrize("kind", ["open", "migrate", "read_only"])
async def test_a_wrong_password_is_a_storage_error_that_never_shows_it(
    postgres_url: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening with a wrong password fails fast with a StorageError saying so, and the password is in no error
    message, chained error or log line."""
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-Passw0rd-4fXq"
    with pytest.raises(StorageError, match="password authentication failed") as raised:
        await open_kind(kind, with_password(postgres_url, wrong))
    assert raised.value.__cause__ is not None  # the driver's own error, kept for the logs
    assert_hidden(raised.value, wrong, caplog)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://receiver:S3cr%zzet-9Kd@127.0.0.1:{port}/db",
        "postgresql://receiver:S3cret-9Kd@[127.0.0.1/db",
        "postgres://receiver:S3cret-9Kd@127.0.0.1:{port}/db?bogus=1",
        "postgresql://receiver:S3cret-9Kd@127.0.0.1:{port}/db",
    ],
    ids=["bad-percent-escape", "bad-host", "unknown-option", "nothing-listening"],
)
@pytest.mark.parametrize("kind", ["open", "migrate", "read_only"])
async def test_a_url_that_cannot_be_used_never_shows_its_password(
    url: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A malformed URL (which libpq quotes in its errors) or one where nothing listens is a StorageError whose
    message, chain and logs never hold the password."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StorageError) as raised:
        await open_kind(kind, url.format(port=free_port()))
    assert_hidden(raised.value, "S3cr", caplog)


async def test_connections_the_server_dropped_are_replaced(db: Database, postgres_url: str) -> None:
    """When the server ends every connection of the pools (a restart, an admin), the next write and read run
    on new connections instead of failing."""
    await db.write(lambda tx: insert_job(tx, "job_1"))
    assert await db.ping() is None
    ended = pg_rows(
        postgres_url,
        "SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    assert len(ended) >= 2 and all(row["ended"] for row in ended)  # a writer and a reader at least
    await db.write(lambda tx: insert_job(tx, "job_2"))
    assert [job.id for job in await jobs.list_page(db, status=None, provider=None, cursor=None, limit=10)] == [
        "job_2",
        "job_1",
    ]


async def test_a_deadlocked_batch_runs_again(postgres_url: str) -> None:
    """Two writes that lock the same rows in opposite orders deadlock; PostgreSQL fails one, whose batch is
    rolled back and run again: both writes succeed, the victim's body having run again."""
    first, second = Database(postgres_url), Database(postgres_url)
    await first.open()
    await second.open()
    try:
        await first.write(lambda tx: (insert_job(tx, "job_a"), insert_job(tx, "job_b")))
        both_hold_one = threading.Barrier(2)
        runs = {"ab": 0, "ba": 0}

        def lock_in_order(name: str, order: tuple[str, str]) -> object:
            def write(tx: Transaction) -> str:
                runs[name] += 1
                jobs.schedule_next_poll(tx, order[0], next_poll_at=T0)
                if runs[name] == 1:
                    both_hold_one.wait(timeout=30)
                jobs.schedule_next_poll(tx, order[1], next_poll_at=T0)
                return name

            return write

        done = await asyncio.gather(
            first.write(lock_in_order("ab", ("job_a", "job_b"))),
            second.write(lock_in_order("ba", ("job_b", "job_a"))),
        )
        assert done == ["ab", "ba"]
        # The winner ran once; the victim at least twice (seen once, under heavy load: three times).
        assert min(runs.values()) == 1 and max(runs.values()) >= 2, runs
    finally:
        await first.close()
        await second.close()


async def test_a_unique_violation_names_the_constraint_but_no_value(db: Database) -> None:
    """A duplicate key's error gives PostgreSQL's primary message (the constraint), never the DETAIL line that
    quotes the row's values; the driver's error stays the cause."""
    await db.write(lambda tx: insert_job(tx, "job_SeCrEtVaLuE"))
    with pytest.raises(UniqueViolation, match="duplicate key") as raised:
        await db.write(lambda tx: insert_job(tx, "job_SeCrEtVaLuE"))
    assert "SeCrEtVaLuE" not in str(raised.value)
    assert "SeCrEtVaLuE" in str(raised.value.__cause__)


def files_holding(cluster: PostgresCluster, url: str, needle: str) -> list[str]:
    """The tables, TOAST tables and indexes of the database whose files hold `needle` (after a CHECKPOINT)."""
    pg_rows(url, "CHECKPOINT")
    relations = pg_rows(
        url,
        "SELECT relname, pg_relation_filepath(oid) AS path FROM pg_class "
        "WHERE relkind IN ('r', 't', 'i') AND pg_relation_filepath(oid) IS NOT NULL",
    )
    found = []
    for row in relations:
        path = cluster.data_dir / row["path"]
        if path.is_file() and needle.encode() in path.read_bytes():
            found.append(row["relname"])
    return sorted(found)


@pytest.mark.parametrize("scrubbed", [True, False], ids=["write_scrubbed", "plain_write"])
async def test_a_scrubbed_write_leaves_the_old_value_in_no_table_file(
    db: Database, postgres_url: str, postgres_cluster: PostgresCluster, scrubbed: bool
) -> None:
    """What `write_scrubbed` overwrote is in no table or index file once it returns (the tables it changed were
    vacuumed); a plain write of the same change leaves the old row version behind."""

    def seal(tx: Transaction) -> None:
        subscriptions.update_credentials(
            tx, "sub_1", url="https://hooks.example/h", config="{}", secret="enc:v1:x", previous_secret=None
        )

    def add(tx: Transaction) -> None:
        subscriptions.insert_subscription(
            tx, "sub_1", kind="webhook", url="https://hooks.example/h", config="{}", events="[]", filter="{}",
            secret=SECRET, now=T0,
        )  # fmt: skip

    await db.write(add)
    assert files_holding(postgres_cluster, postgres_url, SECRET) == ["subscriptions"]
    if scrubbed:
        await db.write_scrubbed(seal)
        assert files_holding(postgres_cluster, postgres_url, SECRET) == []
    else:
        await db.write(seal)
        assert files_holding(postgres_cluster, postgres_url, SECRET) == ["subscriptions"]
    row = await subscriptions.read_subscription(db, "sub_1")
    assert row is not None and row["secret"] == "enc:v1:x"


async def test_the_pools_hold_no_more_connections_than_the_pool_size(postgres_url: str) -> None:
    """Under many concurrent reads and writes a database of pool size 4 opens at most 4 pooled connections."""
    db = Database(postgres_url, pool_size=4)
    await db.open()
    try:
        peak = 0

        async def count() -> None:
            nonlocal peak
            rows = await read_pg_rows(
                postgres_url,
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'receiver'",
            )
            peak = max(peak, rows[0]["n"])

        reads = [jobs.list_page(db, status=None, provider=None, cursor=None, limit=10) for _ in range(40)]
        writes = [db.write(lambda tx, n=n: insert_job(tx, f"job_{n}")) for n in range(40)]
        await asyncio.gather(*reads, *writes, count())
        await count()
        assert 2 <= peak <= 4
        assert len(await jobs.list_page(db, status=None, provider=None, cursor=None, limit=100)) == 40
    finally:
        await db.close()


async def test_a_read_only_open_refuses_to_write(postgres_url: str) -> None:
    """The read-only open reads, and a write through it is a StorageError (a READ ONLY transaction)."""
    async with backends.open_database(postgres_url) as db:
        await db.write(lambda tx: insert_job(tx, "job_1"))
    with backends.open_read_only(postgres_url) as tx:
        assert jobs.get(tx, "job_1").id == "job_1"
        with pytest.raises(StorageError, match="read-only transaction"):
            insert_job(tx, "job_2")


async def test_a_role_that_may_not_create_tables_opens_a_migrated_database(
    postgres_url: str, postgres_cluster: PostgresCluster
) -> None:
    """A role with only read and write rights on the tables (no CREATE: PostgreSQL 15's default on `public`)
    opens a database its owner migrated and writes to it: nothing is created when nothing is missing."""
    role = f"app_{urlsplit(postgres_url).path.strip('/')}"
    postgres_cluster.admin(f"CREATE ROLE {role} LOGIN PASSWORD 'app-Passw0rd'")
    try:
        pg_rows(postgres_url, f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        for grant in (
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
            f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        ):
            pg_rows(postgres_url, grant)
        parts = urlsplit(postgres_url)
        url = parts._replace(netloc=f"{role}:app-Passw0rd@{parts.hostname}:{parts.port}").geturl()
        async with backends.open_database(url) as db:
            await db.write(lambda tx: insert_job(tx, "job_1"))
            assert (await jobs.read(db, "job_1")).id == "job_1"
    finally:
        pg_rows(postgres_url, f"DROP OWNED BY {role}")
        postgres_cluster.admin(f"DROP ROLE {role}")
