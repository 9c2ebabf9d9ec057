"""The backend a database URL names (`receiver.storage.backends`): opening, migrating and reading by URL, on
real files, with driver errors translated and an unknown scheme refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.storage import backends, subscriptions
from receiver.storage.base import Database, DatabaseClosed, SchemaBehind, StorageError
from receiver.storage.sqlite import migrations
from tests.helpers.database import forget_newest_migration
from tests.helpers.storage_rows import T0, insert_subscription


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


async def test_open_database_opens_and_closes_around_the_block(tmp_path: Path) -> None:
    """Inside the block the database is open and migrated; after it, closed (a read is `DatabaseClosed`)."""
    async with backends.open_database(url_of(tmp_path / "receiver.db")) as db:
        assert isinstance(db, Database)
        await db.write(lambda tx: insert_subscription(tx, "sub_1"))
        assert [row["id"] for row in await subscriptions.list_subscriptions(db)] == ["sub_1"]
    with pytest.raises(DatabaseClosed, match="not open"):
        await subscriptions.list_subscriptions(db)


async def test_a_relative_url_names_a_file_below_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sqlite:///rel/receiver.db` is `rel/receiver.db` below the working directory (its folder made)."""
    monkeypatch.chdir(tmp_path)
    db = backends.database_for("sqlite:///rel/receiver.db")
    await db.open()
    try:
        await db.write(lambda tx: insert_subscription(tx, "sub_1", now=T0))
    finally:
        await db.close()
    assert (tmp_path / "rel" / "receiver.db").is_file()


def test_migrate_applies_once_and_the_read_only_open_reads(tmp_path: Path) -> None:
    """`migrate` applies every migration once; the read-only open then reads, and refuses a database a
    migration behind."""
    url = url_of(tmp_path / "receiver.db")
    assert backends.migrate(url) == [number for number, _, _ in migrations()]
    assert backends.migrate(url) == []
    with backends.open_read_only(url) as tx:
        assert subscriptions.credentials(tx) == []
    newest = forget_newest_migration(tmp_path / "receiver.db")
    with pytest.raises(SchemaBehind) as behind, backends.open_read_only(url):
        pass
    assert behind.value.missing == (newest,)


@pytest.mark.parametrize("open_kind", ["read_only", "read_write", "migrate"])
async def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path, open_kind: str) -> None:
    """Every open by URL turns the driver's error on a file that is no database into a StorageError."""
    path = tmp_path / "receiver.db"
    path.write_bytes(b"this is not an SQLite database, not at all" * 100)
    with pytest.raises(StorageError, match="not a database") as raised:
        if open_kind == "read_only":
            with backends.open_read_only(url_of(path)):
                pass
        elif open_kind == "read_write":
            async with backends.open_database(url_of(path)):
                pass
        else:
            backends.migrate(url_of(path))
    assert raised.value.__cause__ is not None


@pytest.mark.parametrize(
    "url",
    ["mysql://receiver:hunter2@db.example/receiver", "mssql://receiver:hunter2@db.example/receiver"],
    ids=["mysql", "mssql"],
)
def test_a_url_of_another_scheme_is_refused_by_its_scheme(url: str) -> None:
    """A URL no backend serves is a ValueError naming its scheme, and never echoing the URL (it may hold a
    password); nothing is opened."""
    scheme = url.partition(":")[0]
    for call in (backends.database_for, backends.migrate):
        with pytest.raises(ValueError, match=f"scheme '{scheme}'") as raised:
            call(url)
        assert "hunter2" not in str(raised.value)
    with pytest.raises(ValueError, match=f"scheme '{scheme}'"), backends.open_read_only(url):
        pass


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://relative.db", "sqlite:relative.db"])
def test_a_malformed_sqlite_url_is_refused(url: str) -> None:
    """A `sqlite:` URL without a file after `sqlite:///` says what one looks like."""
    with pytest.raises(ValueError, match=r"sqlite:///relative/file\.db"):
        backends.database_for(url)
