"""Several receivers on one PostgreSQL database: two `Database` instances (as two processes have) claiming at
once, the caps that must hold across them, LISTEN/NOTIFY wake-ups, and liveness that ends with a killed
process; migrations that two processes start at once."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Collection
from typing import Any

import psycopg
import pytest

from receiver.models import Task
from receiver.storage import backends, events, jobs, tasks
from receiver.storage.base import Database, Transaction
from receiver.storage.postgres import MIGRATION_LOCK, migrations
from receiver.storage.postgres import Database as PostgresDatabase
from tests.helpers.postgres import pg_rows, read_pg_rows
from tests.helpers.storage_rows import T0, insert_job
from tests.helpers.waiting import DEADLINE_S, until

LEASE_S = 60.0


@pytest.fixture
async def pair(postgres_url: str) -> AsyncIterator[tuple[PostgresDatabase, PostgresDatabase]]:
    """Two open databases on one PostgreSQL database: what two receiver processes have."""
    first, second = PostgresDatabase(postgres_url), PostgresDatabase(postgres_url)
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


def claim(db: Database, owner: str, *, limit: int, per_lane: int | None = None, kinds: Collection[str] = ()) -> Any:
    def write(tx: Transaction) -> list[Task]:
        return tasks.claim(
            tx, owner=owner, kinds=kinds, exclude=not kinds, limit=limit, lease_expires_at=T0 + LEASE_S, now=T0,
            per_lane=per_lane,
        )  # fmt: skip

    return db.write(write)


async def test_concurrent_claims_never_lease_a_task_twice(pair: tuple[PostgresDatabase, PostgresDatabase]) -> None:
    """Runners of two processes claiming at the same time (SKIP LOCKED) lease every task exactly once."""
    first, second = pair

    def seed(tx: Transaction) -> None:
        for n in range(200):
            insert_job(tx, f"job_{n:03d}")
            tasks.insert(tx, "submit", f"job_{n:03d}", T0)

    await first.write(seed)
    leased: list[Task] = []
    for _ in range(10):
        rounds = await asyncio.gather(
            *(claim(db, f"{name}-{n}", limit=7) for n in range(4) for name, db in (("a", first), ("b", second)))
        )
        leased += itertools.chain.from_iterable(rounds)
    ids = [task.id for task in leased]
    assert len(ids) == len(set(ids)) == 200
    assert await claim(first, "late", limit=10) == []


async def test_a_lane_cap_holds_across_processes(pair: tuple[PostgresDatabase, PostgresDatabase]) -> None:
    """With `per_lane`, claims from two processes at once never lease more of a lane than the cap, and together
    fill it."""
    first, second = pair

    def seed(tx: Transaction) -> None:
        for n in range(20):
            for lane in ("lane_a", "lane_b"):
                tasks.insert(tx, "deliver", None, T0, lane=lane, payload={"n": n, "lane": lane})

    await first.write(seed)
    leased: list[Task] = []
    for _ in range(3):
        rounds = await asyncio.gather(
            *(
                claim(db, f"{name}-{n}", limit=2, per_lane=3, kinds=["deliver"])
                for n in range(4)
                for name, db in (("a", first), ("b", second))
            )
        )
        leased += itertools.chain.from_iterable(rounds)
    assert Counter(task.payload["lane"] for task in leased) == {"lane_a": 3, "lane_b": 3}


@pytest.mark.parametrize(
    ("concurrency", "rate_per_min", "allowed"), [(2, 0, 2), (0, 3, 3)], ids=["concurrency", "rate"]
)
async def test_provider_limits_hold_across_processes(
    pair: tuple[PostgresDatabase, PostgresDatabase], concurrency: int, rate_per_min: int, allowed: int
) -> None:
    """Dispatch claims for one provider's jobs from two processes at once take no more slots than its
    concurrency (or its submits per minute) allows."""
    first, second = pair
    await first.write(lambda tx: [insert_job(tx, f"job_{n:02d}") for n in range(16)])

    def take(job_id: str) -> Any:
        def write(tx: Transaction) -> bool:
            return jobs.claim_dispatch(
                tx, job_id, provider="fal", concurrency=concurrency, rate_per_min=rate_per_min, synchronous=False,
                now=T0,
            )  # fmt: skip

        return write

    taken = await asyncio.gather(*((first, second)[n % 2].write(take(f"job_{n:02d}")) for n in range(16)))
    assert taken.count(True) == allowed


async def test_watching_wakes_another_process_on_new_tasks_and_events(
    pair: tuple[PostgresDatabase, PostgresDatabase],
) -> None:
    """A process watching the database is called soon after another commits a task or an event."""
    first, second = pair
    wakes = Counter[str]()
    async with first.watching(lambda: wakes.update(["change"])):
        await second.write(lambda tx: tasks.insert(tx, "poll", None, T0))
        await until(lambda: wakes["change"] >= 1, what="a wake-up for a new task")
        seen = wakes["change"]
        payload = {"id": "evt_1"}
        await second.write(
            lambda tx: events.insert_event(
                tx, "evt_1", event_type="job.succeeded", job_id=None, payload=payload, now=T0
            )
        )
        await until(lambda: wakes["change"] > seen, what="a wake-up for a new event")


async def backend_pids(url: str, query_prefix: str) -> set[int]:
    rows = await read_pg_rows(
        url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE %(q)s",
        {"q": query_prefix + "%"},
    )
    return {row["pid"] for row in rows}


async def test_watching_listens_again_after_its_connection_drops(
    pair: tuple[PostgresDatabase, PostgresDatabase], postgres_url: str
) -> None:
    """When the server ends the LISTEN connection, the watcher reconnects, calls once (it may have missed
    something), and later commits wake it again."""
    first, second = pair
    wakes = Counter[str]()
    async with first.watching(lambda: wakes.update(["change"])):
        [listener] = await backend_pids(postgres_url, "LISTEN")
        pg_rows(postgres_url, "SELECT pg_terminate_backend(%(pid)s)", {"pid": listener})
        await until(lambda: wakes["change"] >= 1, what="the call after reconnecting")
        assert listener not in await backend_pids(postgres_url, "LISTEN")
        seen = wakes["change"]
        await second.write(lambda tx: tasks.insert(tx, "poll", None, T0))
        await until(lambda: wakes["change"] > seen, what="a wake-up on the new connection")


ALIVE_CHILD = """
import asyncio, sys
from receiver.storage.postgres import Database

async def main():
    db = Database(sys.argv[1])
    await db.open()
    async with db.alive(sys.argv[2]):
        print("alive", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_process_owner_is_dead_within_seconds(postgres_url: str) -> None:
    """An owner a live process marks alive is not dead; once that process is killed with SIGKILL (no cleanup
    of its own), the owner shows as dead; an owner never marked alive always is."""
    db = PostgresDatabase(postgres_url)
    await db.open()
    child = subprocess.Popen(  # noqa: ASYNC220 (read below off the event loop)
        [sys.executable, "-c", ALIVE_CHILD, postgres_url, "worker-host-1234-abcd"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), DEADLINE_S)
        assert line == "alive\n"
        owners = {"worker-host-1234-abcd", "never-alive"}
        assert await db.dead_owners(owners) == {"never-alive"}
        child.send_signal(signal.SIGKILL)
        await asyncio.to_thread(child.wait)

        async def both_dead() -> bool:
            return await db.dead_owners(owners) == owners

        await until(both_dead, what="the killed process's owner dead")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        await db.close()


async def advisory_holders(url: str) -> set[int]:
    """The backends of this database holding a one-bigint advisory lock (what `alive` takes)."""
    rows = await read_pg_rows(
        url,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    return {row["pid"] for row in rows}


async def test_alive_ends_with_its_block_and_survives_a_dropped_connection(postgres_url: str) -> None:
    """Inside `alive` the owner is not dead, even after the server ended its connection (the lock is taken
    again on a new one); after the block it is."""
    db = PostgresDatabase(postgres_url, alive_check_s=0.05)
    await db.open()
    try:
        async with db.alive("runner-1"), db.alive("runner-2"):
            assert await db.dead_owners(["runner-1", "runner-2", "runner-3"]) == {"runner-3"}
            holders = await advisory_holders(postgres_url)
            assert len(holders) == 2
            pg_rows(postgres_url, "SELECT pg_terminate_backend(pid) FROM unnest(%(pids)s::int[]) AS pid",
                    {"pids": sorted(holders)})  # fmt: skip

            async def taken_again() -> bool:
                now_holding = await advisory_holders(postgres_url)
                return len(now_holding) == 2 and not now_holding & holders

            await until(taken_again, what="the liveness locks taken again on new connections")
            assert await db.dead_owners(["runner-1", "runner-2"]) == set()
        assert await db.dead_owners(["runner-1", "runner-2"]) == {"runner-1", "runner-2"}
    finally:
        await db.close()


async def test_two_processes_migrating_at_once_apply_each_migration_once(empty_postgres_url: str) -> None:
    """Two migrations of one fresh database started together: the second waits for the first's advisory lock,
    then finds nothing to do; every migration is applied and recorded once."""
    url = empty_postgres_url
    holder = await asyncio.to_thread(_hold_lock, url)
    try:
        results: list[list[int]] = []
        threads = [threading.Thread(target=lambda: results.append(backends.migrate(url))) for _ in range(2)]
        for thread in threads:
            thread.start()

        async def both_wait() -> bool:
            rows = await read_pg_rows(
                url,
                "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND ((classid::bigint << 32) | objid::bigint) = %(key)s",
                {"key": MIGRATION_LOCK},
            )
            return bool(rows[0]["n"] == 2)

        await until(both_wait, what="both migrations waiting for the lock")
    finally:
        holder.set()
    for thread in threads:
        await asyncio.to_thread(thread.join)
    everything = [number for number, _, _ in migrations()]
    assert sorted(results) == [[], everything]
    recorded = pg_rows(url, "SELECT number FROM schema_migrations ORDER BY number")
    assert [row["number"] for row in recorded] == everything


def _hold_lock(url: str) -> threading.Event:
    """Take the migration lock on a connection of the test's own, held until the returned event is set."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            taken.set()
            release.wait()

    threading.Thread(target=hold, daemon=True).start()
    taken.wait()
    return release
