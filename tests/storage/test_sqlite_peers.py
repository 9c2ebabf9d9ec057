"""The SQLite backend across processes: commits by another connection wake `watching`, and an owner's flock
in `<database>.owners/` ends with its process, however it ends."""

from __future__ import annotations

import asyncio
import signal
import stat
import subprocess
import sys
from pathlib import Path

from receiver.storage import sqlite_peers, tasks
from receiver.storage.sqlite import Database
from tests.helpers.storage_rows import T0

HOLDER = """
import sys, time
from pathlib import Path
from receiver.storage import sqlite_peers
sqlite_peers.hold_owner(Path(sys.argv[1]), sys.argv[2])
print("holding", flush=True)
time.sleep(600)
"""


async def test_a_commit_by_another_connection_wakes_the_watcher(tmp_path: Path) -> None:
    """A task committed through a second `Database` on the same file (as another process would) calls the
    first one's `on_change` in its event loop."""
    path = tmp_path / "receiver.db"
    watched, other = Database(path), Database(path)
    await watched.open()
    await other.open()
    woken = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_change() -> None:
        assert asyncio.get_running_loop() is loop
        woken.set()

    try:
        async with watched.watching(on_change):
            await other.write(lambda tx: tasks.insert(tx, "work", None, T0))
            async with asyncio.timeout(15):
                await woken.wait()
    finally:
        await other.close()
        await watched.close()


async def test_an_owner_killed_with_sigkill_is_dead_and_its_file_swept(tmp_path: Path) -> None:
    """A process holding an owner's lock is alive to others; after `kill -9` the owner is dead at once and
    the file it left is removed by whoever finds it."""
    path = tmp_path / "receiver.db"
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [sys.executable, "-c", HOLDER, str(path), "host:1:ab"], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.to_thread(proc.stdout.readline) == b"holding\n"
        assert sqlite_peers.dead_owners(path, {"host:1:ab", "host:2:cd"}) == {"host:2:cd"}
        directory = sqlite_peers.owners_dir(path)
        [held] = directory.iterdir()
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700 and stat.S_IMODE(held.stat().st_mode) == 0o600
        assert held.read_text() == "host:1:ab\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.communicate)
    assert sqlite_peers.dead_owners(path, {"host:1:ab"}) == {"host:1:ab"}
    assert list(sqlite_peers.owners_dir(path).iterdir()) == []


async def test_stale_owner_files_are_swept_when_an_owner_starts(tmp_path: Path) -> None:
    """Files left by owners nobody asked about (killed while holding no lease) go when the next owner starts;
    a held one stays."""
    path = tmp_path / "receiver.db"
    db = Database(path)
    await db.open()
    try:
        async with db.alive("first"):
            stale = sqlite_peers.owners_dir(path) / ("0" * 32)
            stale.write_text("killed long ago\n")
            async with db.alive("second"):
                assert not stale.exists()
                assert len(list(sqlite_peers.owners_dir(path).iterdir())) == 2
    finally:
        await db.close()
