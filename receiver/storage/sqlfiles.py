"""A dialect's SQL on disk, read the same way for every backend: the `-- name: x` blocks of the `.sql` files of
`receiver/storage/sql/<dialect>/` (migrations aside) and its numbered migrations (`migrations/NNNN_name.sql`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d+)_(\w+)\.sql$")


def load_queries(dialect: str, convert: Callable[[str], str] = str) -> dict[str, str]:
    """The named blocks of `dialect`, each passed through `convert` (a driver's parameter style); a name
    defined twice is an error."""
    queries: dict[str, str] = {}
    folder = resources.files(f"receiver.storage.sql.{dialect}")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = _NAME.split(entry.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in queries:
                raise RuntimeError(f"query {name!r} is defined twice (second in {entry.name})")
            queries[name] = convert(body.strip().rstrip(";"))
    return queries


def migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(number, name, sql) of every migration of `dialect`, in order."""
    found = []
    for entry in resources.files(f"receiver.storage.sql.{dialect}.migrations").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)
