"""Owner-only files and directories (0600 / 0700) for the database, the secret key and the blob store.

Modes are set explicitly after creation rather than through the process umask, which stays the
operator's: a umask of 0 would otherwise leave the files world-readable, and changing the umask of a
whole process (uvicorn, threads, libraries) behind its back would surprise whatever else it creates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)
FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(directory: Path) -> bool:
    """Create `directory` (its parent must exist) as 0700; True when this call created it."""
    try:
        directory.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return False
    os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask, which may drop owner bits
    return True


def make_private_dirs(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents as 0700 (existing ones are left alone); returns the
    directories created, outermost first."""
    missing = []
    current = directory
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    return [new for new in reversed(missing) if make_private_dir(new)]


def make_private_file(path: Path) -> None:
    """Create `path` empty as 0600 if it does not exist; an existing file readable by others is made 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            try:
                os.fchmod(fd, FILE_MODE)
            except PermissionError:  # somebody else's file we may write to: theirs to fix, say so
                log.warning("cannot make %s owner-only (not its owner)", path)
    finally:
        os.close(fd)


def tighten_file(path: Path) -> None:
    """Make an existing file 0600 if others could read it (files an older version created); no-op if absent."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, FILE_MODE)


def shared_dir_warning(directory: Path, setting: str) -> str | None:
    """A warning when an existing `directory` lets its group or others in (one made before 0700 was the rule)."""
    try:
        mode = stat.S_IMODE(directory.stat().st_mode)
    except FileNotFoundError:
        return None
    if not mode & 0o077:
        return None
    return f"{setting} {directory} is mode {mode:o}: other users may read its secrets; run chmod 700 {directory}"
