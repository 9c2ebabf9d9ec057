"""Processes sharing one SQLite file on one machine: who is alive (an flock per owner) and who committed
(`PRAGMA data_version`). The SQLite backend's `alive`, `dead_owners` and `watching` (see
`receiver.storage.base`) are built on these.

Owners: `<database file>.owners/` (0700) holds one file per live task-lease owner, named by a hash of the
owner, flock'ed by its process for as long as the owner is alive. The kernel drops the lock when the
process ends, however it ends (`kill -9` included), so an owner whose file is missing or unlocked is dead.

Commits: `PRAGMA data_version` on a connection changes when any OTHER connection has committed since the
last time it was read. A thread polls it every `WATCH_INTERVAL_S` on a connection of its own; this
process's own writer is another connection too, so its commits are seen as well (spurious wake-ups, which
`Database.watching` allows).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Collection
from pathlib import Path

from receiver.support.private_paths import FILE_MODE, make_private_dirs

log = logging.getLogger(__name__)

# How often the watcher reads `PRAGMA data_version`: the longest a wake-up from another process waits.
# Measured idle cost on the 2-core bench machine: see docs/benchmarks.md ("Where the worker runs").
WATCH_INTERVAL_S = 0.01


def owners_dir(database: Path) -> Path:
    return database.with_name(database.name + ".owners")


def _owner_file(directory: Path, owner: str) -> Path:
    return directory / hashlib.sha256(owner.encode()).hexdigest()[:32]


def hold_owner(database: Path, owner: str) -> int:
    """Create and flock `owner`'s file (first clearing files no live process holds); the open descriptor,
    for `drop_owner`. Raises `BlockingIOError` when another open file holds `owner` already."""
    directory = owners_dir(database)
    make_private_dirs(directory)
    sweep_owners(directory)
    path = _owner_file(directory, owner)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A sweeper may have unlinked the file between our open and our lock: then the lock is on
            # a file nobody can find, so start again with a new one.
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, owner.encode() + b"\n")  # for an operator looking at the directory
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def drop_owner(database: Path, owner: str, fd: int) -> None:
    """End `hold_owner`: remove the file while still holding its lock, then let the lock go."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_owner_file(owners_dir(database), owner))
    finally:
        os.close(fd)


def _is_held(path: Path) -> bool | None:
    """Whether a live process holds `path`'s lock (None: no such file). An unheld file is removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # its owner is gone: nobody will ever hold this file again
        return False
    finally:
        os.close(fd)


def dead_owners(database: Path, owners: Collection[str]) -> set[str]:
    """Those of `owners` whose file is missing or held by no process."""
    directory = owners_dir(database)
    return {owner for owner in owners if not _is_held(_owner_file(directory, owner))}


def sweep_owners(directory: Path) -> None:
    """Remove the files of owners whose process ended without removing its own (killed)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.is_file(follow_symlinks=False):
                _is_held(Path(entry.path))


class CommitWatcher:
    """A thread that calls `on_change()` (from that thread) within `interval_s` of a commit by another
    connection to the database."""

    def __init__(self, path: Path, on_change: Callable[[], None], *, interval_s: float = WATCH_INTERVAL_S) -> None:
        self._path, self._on_change, self._interval_s = path, on_change, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the watcher's connection and start polling (raises `sqlite3.Error` when it cannot open)."""
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA query_only=ON")
            version = _data_version(conn)
        except BaseException:
            conn.close()
            raise
        self._thread = threading.Thread(
            target=self._poll, args=(conn, version), name="receiver-commit-watcher", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _poll(self, conn: sqlite3.Connection, version: int) -> None:
        try:
            while not self._stop.wait(self._interval_s):
                try:
                    now = _data_version(conn)
                except sqlite3.Error:
                    log.exception("watching the database for commits failed; retrying in 1 s")
                    self._stop.wait(1.0)
                    continue
                if now != version:
                    version = now
                    self._on_change()
        finally:
            conn.close()


def _data_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA data_version").fetchone()
    return int(row[0])
