"""SQLite maintenance behind the storage boundary, on real files: the scrubbed write and the read-only open of
`receiver purge --dry-run`."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from receiver.storage import subscriptions
from receiver.storage.base import SchemaBehind, StorageError, Transaction
from receiver.storage.sqlite import Database, migrations, open_read_only
from tests.helpers.database import forget_newest_migration

SECRET = "PlaintextSecretValue-7Hq2Zx"


def files_holding(folder: Path, needle: str) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.is_file() and needle.encode() in path.read_bytes())


def add_subscription(tx: Transaction) -> None:
    subscriptions.insert_subscription(
        tx, "sub_1", kind="webhook", url="https://hooks.example/h", config="{}", events="[]", filter="{}",
        secret=SECRET, now=1.0,
    )  # fmt: skip


def seal(tx: Transaction) -> None:
    subscriptions.update_credentials(
        tx, "sub_1", url="https://hooks.example/h", config="{}", secret="enc:v1:x", previous_secret=None
    )


async def stored_secret(tmp_path: Path) -> Database:
    """A database holding SECRET in its file (written, then closed so the WAL is checkpointed), reopened."""
    db = Database(tmp_path / "receiver.db")
    await db.open()
    await db.write(add_subscription)
    await db.close()
    assert files_holding(tmp_path, SECRET) == ["receiver.db"]
    db = Database(tmp_path / "receiver.db")
    await db.open()
    return db


@pytest.mark.parametrize("scrubbed", [True, False], ids=["write_scrubbed", "plain_write"])
async def test_a_scrubbed_write_leaves_no_old_value_in_any_file(tmp_path: Path, scrubbed: bool) -> None:
    """What `write_scrubbed` overwrote is in neither the database file nor its WAL once it returns; a plain
    write of the same change leaves the old bytes behind (which is why the sweep scrubs)."""
    db = await stored_secret(tmp_path)
    try:
        if scrubbed:
            await db.write_scrubbed(seal)
            assert files_holding(tmp_path, SECRET) == []
        else:
            await db.write(seal)
            assert files_holding(tmp_path, SECRET) != []
        row = await subscriptions.read_subscription(db, "sub_1")
        assert row is not None and row["secret"] == "enc:v1:x"
    finally:
        await db.close()


def test_the_read_only_open_reads_and_never_writes(tmp_path: Path) -> None:
    """A migrated database is read through `open_read_only`; a write through it is refused (StorageError),
    and the file's mode is left alone."""
    path = tmp_path / "receiver.db"

    async def seed() -> None:
        db = Database(path)
        await db.open()
        await db.write(add_subscription)
        await db.close()

    asyncio.run(seed())
    path.chmod(0o640)
    with open_read_only(path) as tx:
        assert [row["id"] for row in subscriptions.credentials(tx)] == ["sub_1"]
        with pytest.raises(StorageError, match="readonly"):
            seal(tx)
    with open_read_only(path) as tx:
        assert [row["secret"] for row in subscriptions.credentials(tx)] == [SECRET]
    assert path.stat().st_mode & 0o777 == 0o640


async def test_the_read_only_open_refuses_a_schema_behind_this_version(tmp_path: Path) -> None:
    """A database that lacks this version's newest migration raises SchemaBehind naming it; a
    database never migrated lacks them all."""
    db = Database(tmp_path / "receiver.db")
    await db.open()
    await db.close()
    newest = forget_newest_migration(tmp_path / "receiver.db")
    assert newest == migrations()[-1][0]
    with pytest.raises(SchemaBehind) as behind, open_read_only(tmp_path / "receiver.db"):
        pass
    assert behind.value.missing == (newest,)
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(SchemaBehind) as empty, open_read_only(tmp_path / "empty.db"):
        pass
    assert empty.value.missing == tuple(number for number, _, _ in migrations())
