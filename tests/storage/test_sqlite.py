"""SQLite plumbing on real files: migrations, pragmas, the group-committing writer, durability, SQL blocks.

The writer is driven through `Database.write` with transaction bodies; what is on disk is read back by a
connection of the test's own.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from receiver.storage import jobs, tasks
from receiver.storage import sqlite as sqlite_module
from receiver.storage.base import (
    DatabaseClosed,
    IntegrityViolation,
    StorageError,
    Transaction,
    UniqueViolation,
    WriteFn,
)
from receiver.storage.sqlite import Database, apply_migrations, connect, load_queries, migrate, migrations
from tests.helpers.files import mode_of


def insert_task_row(kind: str, *, fail: bool = False) -> WriteFn[str]:
    """A body queueing one task of `kind`; with `fail`, it raises after inserting (so the row must vanish)."""

    def write(tx: Transaction) -> str:
        tasks.insert(tx, kind, None, 0)
        if fail:
            raise LookupError(f"boom in {kind}")
        return kind

    return write


def task_kinds(db: Database) -> list[str]:
    """The kinds of the committed task rows, in insertion order (read by a connection of our own)."""
    conn = sqlite3.connect(db.path)
    try:
        return [row[0] for row in conn.execute("SELECT kind FROM tasks ORDER BY id")]
    finally:
        conn.close()


class Blocker:
    """A body that holds the writer thread until released, so the next writes queue into one batch."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, tx: Transaction) -> None:
        self.entered.set()
        self.release.wait()

    async def release_later(self) -> None:
        """Release from a task, i.e. after every task created before it has had its first step."""
        self.release.set()


# --- migrations ---------------------------------------------------------------------------------


def test_migrations_are_numbered_and_ordered() -> None:
    """Migration files are found, numbered from 1 without gaps, and returned in order."""
    found = migrations()
    assert [number for number, _, _ in found] == list(range(1, len(found) + 1))
    assert found[0][1] == "initial"


@pytest.mark.parametrize(
    "query", ["metrics_dead_tasks", "metrics_task_queues", "dashboard_task_kinds", "alert_dead_tasks"]
)
def test_task_counts_never_walk_the_finished_tasks(tmp_path: Path, query: str) -> None:
    """What `/metrics`, the health strip and the alerts count on every scrape, page and check reads only the
    partial indexes of open or dead tasks: never the table, nor `tasks_finished` (done tasks pile up there until
    the retention purge: on 1M done tasks the old reads took 56-220 ms each, these 0.03-0.11 ms)."""
    conn = connect(tmp_path / "plans.db")
    try:
        apply_migrations(conn)
        sql = load_queries()[query]
        params = {"since": 0.0}
        steps = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        scans = [step for step in steps if step.startswith(("SCAN tasks", "SEARCH tasks"))]
        assert scans, steps
        assert all("USING INDEX tasks_" in step and "tasks_finished" not in step for step in scans), steps
    finally:
        conn.close()


def test_migrations_apply_once_and_are_recorded(tmp_path: Path) -> None:
    """The first run applies every migration and records it; a second run applies nothing."""
    conn = connect(tmp_path / "fresh.db")
    try:
        numbers = [number for number, _, _ in migrations()]
        assert apply_migrations(conn) == numbers
        recorded = conn.execute("SELECT number, name FROM schema_migrations ORDER BY number").fetchall()
        assert [tuple(row) for row in recorded] == [(number, name) for number, name, _ in migrations()]
        assert apply_migrations(conn) == []
        assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(numbers)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"jobs", "inbox", "tasks", "schema_migrations"} <= tables
    finally:
        conn.close()


async def test_database_open_migrates_and_reopen_applies_nothing(tmp_path: Path) -> None:
    """Opening a Database migrates the file; the migrations are then recorded, so re-applying does nothing."""
    path = tmp_path / "receiver.db"
    database = Database(path)
    await database.open()
    await database.close()
    database = Database(path)
    await database.open()  # a second open over a migrated file must not fail on existing tables
    await database.close()
    conn = connect(path)
    try:
        assert apply_migrations(conn) == []
    finally:
        conn.close()


def test_connect_creates_parent_directories(tmp_path: Path) -> None:
    """`connect` makes the database's directory when it does not exist yet."""
    conn = connect(tmp_path / "a" / "b" / "receiver.db")
    conn.close()
    assert (tmp_path / "a" / "b" / "receiver.db").exists()


def test_database_files_are_owner_only_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """The database, its -wal and -shm are 0600 and a directory made for it 0700, even under umask 0."""
    path = tmp_path / "new" / "receiver.db"
    conn = connect(path)
    try:
        apply_migrations(conn)
        conn.execute("INSERT INTO tasks (kind, run_at, created_at, updated_at) VALUES ('x', 0, 0, 0)")
        files = [path, path.with_name("receiver.db-wal"), path.with_name("receiver.db-shm")]
        assert {file.name: oct(mode_of(file)) for file in files} == {file.name: "0o600" for file in files}
        assert mode_of(path.parent) == 0o700
    finally:
        conn.close()


def test_database_files_left_readable_by_older_versions_are_tightened(tmp_path: Path) -> None:
    """A database, -wal and -shm that others could read (made before this rule) are 0600 once reopened."""
    path = tmp_path / "receiver.db"
    conn = connect(path)
    conn.execute("CREATE TABLE t (x)")
    files = [path, path.with_name("receiver.db-wal"), path.with_name("receiver.db-shm")]
    for file in files:
        file.chmod(0o644)
    again = connect(path)
    try:
        assert [mode_of(file) for file in files] == [0o600, 0o600, 0o600]
    finally:
        again.close()
        conn.close()


# --- pragmas ------------------------------------------------------------------------------------


async def test_writer_connection_is_wal_full_sync_with_foreign_keys(db: Database) -> None:
    """The writing connection runs in WAL mode with synchronous=FULL and foreign keys enforced."""

    def pragmas(conn: sqlite3.Connection) -> tuple[str, int, int]:
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
        foreign_keys = conn.execute("PRAGMA foreign_keys").fetchone()[0]
        return journal, synchronous, foreign_keys

    assert await db._writer.run(pragmas) == ("wal", 2, 1)  # synchronous 2 == FULL
    assert [tuple(row) for row in await db._read("PRAGMA journal_mode")] == [("wal",)]


async def test_foreign_keys_are_enforced_on_writes(db: Database) -> None:
    """A task pointing at a job that does not exist is refused by the foreign key, as an IntegrityViolation
    carrying SQLite's own error."""
    with pytest.raises(IntegrityViolation, match="FOREIGN KEY") as raised:
        await db.write(lambda tx: tasks.insert(tx, "x", "job_missing", 0))
    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)


async def test_unique_and_primary_keys_are_unique_violations(db: Database) -> None:
    """A taken primary key (a job id) and a taken unique index (a provider's request id) are both a
    UniqueViolation, carrying SQLite's own error."""

    def job(job_id: str) -> WriteFn[None]:
        return lambda tx: jobs.insert(
            tx, job_id, provider="fal", model="m", input={}, metadata=None, callback_url=None, now=0
        )

    await db.write(job("job_1"))
    await db.write(job("job_2"))
    with pytest.raises(UniqueViolation, match=r"jobs\.id") as raised:
        await db.write(job("job_1"))
    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)
    await db.write(lambda tx: jobs.bind_request_id(tx, "job_1", "req-1", now=0))
    with pytest.raises(UniqueViolation, match="provider_request_id"):
        await db.write(lambda tx: jobs.bind_request_id(tx, "job_2", "req-1", now=0))


async def test_reader_connection_is_read_only(db: Database) -> None:
    """The read connection refuses writes: every write goes through the writer."""
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await db._read("INSERT INTO tasks (kind, run_at, created_at, updated_at) VALUES ('x', 0, 0, 0)")


# --- the writer ---------------------------------------------------------------------------------


async def test_concurrent_writes_are_group_committed(db: Database) -> None:
    """200 concurrent writes all commit, in fewer commits than writes."""
    commits, writes = db.commits, db.writes
    kinds = await asyncio.gather(*(db.write(insert_task_row(f"k{n}")) for n in range(200)))
    assert kinds == [f"k{n}" for n in range(200)]
    assert db.writes - writes == 200
    assert db.commits - commits < 200
    assert sorted(task_kinds(db)) == sorted(kinds)


async def test_failing_write_rolls_back_only_itself(db: Database) -> None:
    """In one batch, a write that raises is rolled back alone; its caller gets the error, the others commit."""
    blocker = Blocker()
    blocked = asyncio.create_task(db.write(blocker))
    await asyncio.to_thread(blocker.entered.wait)
    commits = db.commits
    batch = [
        asyncio.create_task(db.write(insert_task_row("first"))),
        asyncio.create_task(db.write(insert_task_row("broken", fail=True))),
        asyncio.create_task(db.write(insert_task_row("last"))),
    ]
    await asyncio.create_task(blocker.release_later())  # runs after the three tasks have queued their writes
    await blocked
    results = await asyncio.gather(*batch, return_exceptions=True)
    assert db.commits - commits == 2  # the blocker's batch, then the three together
    assert results[0] == "first" and results[2] == "last"
    assert isinstance(results[1], LookupError) and str(results[1]) == "boom in broken"
    assert task_kinds(db) == ["first", "last"]


async def test_constraint_violation_fails_only_its_caller(db: Database) -> None:
    """A write that breaks a constraint in the same batch as others raises to its caller alone (its earlier
    statements rolled back too); the others commit."""
    blocker = Blocker()
    blocked = asyncio.create_task(db.write(blocker))
    await asyncio.to_thread(blocker.entered.wait)

    def orphan(tx: Transaction) -> None:
        tasks.insert(tx, "before-orphan", None, 0)
        tasks.insert(tx, "orphan", "job_missing", 0)

    batch = [
        asyncio.create_task(db.write(insert_task_row("first"))),
        asyncio.create_task(db.write(orphan)),
        asyncio.create_task(db.write(insert_task_row("last"))),
    ]
    await asyncio.create_task(blocker.release_later())
    await blocked
    results = await asyncio.gather(*batch, return_exceptions=True)
    assert results[0] == "first" and results[2] == "last"
    assert isinstance(results[1], StorageError) and "FOREIGN KEY" in str(results[1])
    assert task_kinds(db) == ["first", "last"]


async def test_a_failed_commit_fails_every_write_of_its_batch_with_a_storage_error(db: Database) -> None:
    """A body deferring a broken foreign key to COMMIT makes the batch's one commit fail: every write of that
    batch (the innocent ones too: nothing of it is durable) raises an `IntegrityViolation` of its own carrying
    SQLite's error, never the driver's error itself; the writer goes on."""
    blocker = Blocker()
    blocked = asyncio.create_task(db.write(blocker))
    await asyncio.to_thread(blocker.entered.wait)

    def dangling_key(tx: Transaction) -> None:
        jobs.claim_idempotency_key(tx, scope="s", key="k", fingerprint="f", job_id="job_missing", now=0)

    batch = [
        asyncio.create_task(db.write(insert_task_row("first"))),
        asyncio.create_task(db.write(dangling_key)),
        asyncio.create_task(db.write(insert_task_row("last"))),
    ]
    await asyncio.create_task(blocker.release_later())
    await blocked
    results = await asyncio.gather(*batch, return_exceptions=True)
    assert [type(result) for result in results] == [IntegrityViolation] * 3, results
    assert all(isinstance(result.__cause__, sqlite3.IntegrityError) for result in results)
    assert len({id(result) for result in results}) == 3  # one exception per caller, never one shared
    assert "FOREIGN KEY" in str(results[0])
    assert task_kinds(db) == []
    assert await db.write(insert_task_row("after")) == "after"
    assert task_kinds(db) == ["after"]


async def test_a_write_queued_while_the_database_closes_is_refused(db: Database) -> None:
    """A write queued behind the writer's stop signal (the writer still busy with the batch before) is
    refused with `DatabaseClosed` once the writer stops, never left waiting."""
    blocker = Blocker()
    blocked = asyncio.create_task(db.write(blocker))
    await asyncio.to_thread(blocker.entered.wait)
    stopping = asyncio.create_task(db._writer.stop())  # its first step queues the stop signal
    late = asyncio.create_task(db.write(insert_task_row("late")))  # its first step queues the write behind it
    await asyncio.create_task(blocker.release_later())  # runs after both first steps
    await blocked
    await stopping
    with pytest.raises(DatabaseClosed, match="not open"):
        await late
    assert task_kinds(db) == []


async def test_cancelled_caller_write_still_commits(db: Database) -> None:
    """A write whose awaiting caller was cancelled is still committed (the caller just never hears)."""
    blocker = Blocker()
    blocked = asyncio.create_task(db.write(blocker))
    await asyncio.to_thread(blocker.entered.wait)
    orphan = asyncio.create_task(db.write(insert_task_row("orphan")))

    async def cancel_then_release() -> None:  # runs after `orphan` has queued its write
        orphan.cancel()
        blocker.release.set()

    await asyncio.create_task(cancel_then_release())
    await blocked
    with pytest.raises(asyncio.CancelledError):
        await orphan
    await db.write(insert_task_row("next"))  # FIFO: once this is committed, so is the orphan
    assert task_kinds(db) == ["orphan", "next"]


async def test_a_write_waits_out_another_writers_lock_and_takes_what_queued_meanwhile(db: Database) -> None:
    """Another connection (another process's writer, in production) holding the write lock makes the writer
    wait and retry, not fail; what queued behind the waiting batch joins it, so one commit follows the lock's
    release, in queue order."""
    holder = connect(db.path)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO tasks (kind, run_at, created_at, updated_at) VALUES ('other', 0, 0, 0)")
        commits, waits = db.commits, db._writer.lock_waits
        first = asyncio.create_task(db.write(insert_task_row("first")))
        while db._writer.lock_waits == waits:  # noqa: ASYNC110 (a counter of the writer thread, no event to await)
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(db.write(insert_task_row(f"k{n}"))) for n in range(4)]

        async def release() -> None:  # runs after every write above has queued
            holder.execute("COMMIT")

        await asyncio.create_task(release())
        assert await first == "first"
        assert await asyncio.gather(*rest) == ["k0", "k1", "k2", "k3"]
    finally:
        holder.close()
    assert db.commits - commits == 1
    assert task_kinds(db) == ["other", "first", "k0", "k1", "k2", "k3"]


async def test_a_background_writer_waits_in_sqlites_busy_handler(tmp_path: Path) -> None:
    """The worker role's writer (`background`) waits for another connection's write lock in SQLite's busy
    handler, and commits once it is released."""
    db = Database(tmp_path / "receiver.db", background=True)
    await db.open()
    holder = connect(db.path)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO tasks (kind, run_at, created_at, updated_at) VALUES ('other', 0, 0, 0)")
        waiting = asyncio.create_task(db.write(insert_task_row("background")))
        await asyncio.sleep(0.1)  # not an assertion: lets the writer meet the lock before it is released
        holder.execute("COMMIT")
        assert await waiting == "background"
    finally:
        holder.close()
        await db.close()
    assert task_kinds(db) == ["other", "background"]


async def test_a_write_lock_held_past_the_busy_timeout_fails_the_batch(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write lock held by another connection for longer than `BUSY_TIMEOUT_S` fails the waiting writes with
    a `StorageError` (nothing of them committed); the writer goes on once the lock is free."""
    monkeypatch.setattr(sqlite_module, "BUSY_TIMEOUT_S", 0.05)
    holder = connect(db.path)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageError, match="locked") as raised:
            await db.write(insert_task_row("late"))
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert await db.write(insert_task_row("after")) == "after"
    assert task_kinds(db) == ["after"]


async def test_acknowledged_writes_survive_reopen(tmp_path: Path) -> None:
    """Data from acknowledged writes is in the file after closing and reopening the Database."""
    path = tmp_path / "durable.db"
    first = Database(path)
    await first.open()
    await asyncio.gather(*(first.write(insert_task_row(f"k{n}")) for n in range(50)))
    await first.close()
    second = Database(path)
    await second.open()
    try:
        assert sorted(task_kinds(second)) == sorted(f"k{n}" for n in range(50))
        assert await tasks.next_run_at(second) == 0
    finally:
        await second.close()


async def test_reads_see_acknowledged_writes(db: Database) -> None:
    """A read issued after a write was acknowledged sees that write."""
    for n in range(5):
        await db.write(
            lambda tx, n=n: jobs.insert(
                tx, f"job_{n}", provider="fal", model="m", input={}, metadata=None, callback_url=None, now=n
            )
        )
        assert (await jobs.read(db, f"job_{n}")).id == f"job_{n}"
        assert await db.value("next_task_run_at") is None


async def test_a_cancelled_read_never_pins_later_reads_to_an_old_snapshot(db: Database) -> None:
    """A read whose caller is cancelled mid-query leaves no statement open: later reads see later writes."""
    for n in range(3):
        await db.write(insert_task_row(f"k{n}"))
    # Many rows, each slow to produce: the reader's thread is still inside the query when we cancel.
    slow = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) SELECT i FROM n, tasks"
    for _ in range(3):
        read = asyncio.create_task(db._read(slow))
        await asyncio.sleep(0.005)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
    await db.write(insert_task_row("after"))
    assert "after" in [row["kind"] for row in await db._read("SELECT kind FROM tasks")]


async def test_database_refuses_work_when_not_open(tmp_path: Path) -> None:
    """A Database never opened, or closed, refuses writes and reads instead of hanging; closing twice is
    harmless."""
    database = Database(tmp_path / "closed.db")
    with pytest.raises(DatabaseClosed, match="not open"):
        await database.write(insert_task_row("x"))
    with pytest.raises(DatabaseClosed, match="not open"):
        await database.all("next_task_run_at")
    await database.open()
    assert await database.write(insert_task_row("x")) == "x"
    await database.close()
    await database.close()
    with pytest.raises(DatabaseClosed, match="not open"):
        await database.write(insert_task_row("y"))
    with pytest.raises(DatabaseClosed, match="not open"):
        await database.one("next_task_run_at")


def test_migrate_applies_once_and_reports_driver_errors_as_storage_errors(tmp_path: Path) -> None:
    """`migrate` (the CLI's) applies every migration once; a file that is no database is a StorageError."""
    assert migrate(tmp_path / "receiver.db") == [number for number, _, _ in migrations()]
    assert migrate(tmp_path / "receiver.db") == []
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(StorageError) as raised:
        migrate(garbage)
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)


async def test_open_reports_driver_errors_as_storage_errors_and_leaves_nothing_open(tmp_path: Path) -> None:
    """`Database.open` on a file that is no database raises a StorageError carrying SQLite's error, and
    leaves no writer running; the same object opens once the file is a database."""
    path = tmp_path / "receiver.db"
    path.write_bytes(b"not a database" * 100)
    database = Database(path)
    with pytest.raises(StorageError, match="not a database") as raised:
        await database.open()
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)
    assert database._writer._thread is None
    with pytest.raises(DatabaseClosed):
        await database.write(insert_task_row("x"))
    path.unlink()
    await database.open()
    try:
        assert await database.write(insert_task_row("x")) == "x"
    finally:
        await database.close()


# --- named SQL blocks ---------------------------------------------------------------------------


class _Nulls(dict[str, Any]):
    def __missing__(self, key: str) -> None:
        return None


def test_every_query_compiles_against_the_schema(tmp_path: Path) -> None:
    """Each named block is one statement, without its `;`, that prepares against the migrated schema (no
    misspelt table or column). Which blocks the stores run: `test_sql_blocks.py`."""
    conn = connect(tmp_path / "schema.db")
    try:
        apply_migrations(conn)
        for name, sql in load_queries().items():
            assert sql and not sql.endswith(";"), name
            try:
                conn.execute(f"EXPLAIN {sql}", _Nulls())
            except sqlite3.Error as exc:
                pytest.fail(f"query {name} does not compile: {exc}")
    finally:
        conn.close()


async def test_another_process_closing_the_file_never_deletes_our_wal(tmp_path: Path) -> None:
    """A scrubbed write (every start-up runs one) reconnects to the database file; the file is never opened and
    closed by path meanwhile, which would drop this process's POSIX locks on it (SQLite's included), so a
    second process that opens and closes the file must see ours and leave the `-wal` in place."""
    path = tmp_path / "receiver.db"
    db = Database(path)
    await db.open()
    try:
        await db.write_scrubbed(lambda tx: tasks.insert(tx, "scrubbed", None, 0))
        await db.write(insert_task_row("acknowledged"))
        wal = path.with_name(path.name + "-wal")
        assert wal.exists()
        code = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
            " c.execute('SELECT COUNT(*) FROM tasks').fetchall(); c.close()"
        )
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, str(path))
        assert await proc.wait() == 0
        assert wal.exists(), "another process deleted the WAL under our open connections"
        with sqlite3.connect(path) as conn:  # SQLite keeps its own connections' locks whatever they close
            kinds = {kind for (kind,) in conn.execute("SELECT kind FROM tasks")}
        assert kinds == {"scrubbed", "acknowledged"}
    finally:
        await db.close()
