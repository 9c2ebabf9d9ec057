"""The PostgreSQL dialect's named SQL blocks (in psycopg's parameter style) and its numbered migrations."""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
# What `:name` parameters may not be found in (literals, quoted identifiers, comments, `::` casts), a
# parameter, or a literal `%` (psycopg reads `%` everywhere in a query with parameters).
_TOKENS = re.compile(
    r"""(?P<skip>'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$|::)"""
    r"""|:(?P<name>[A-Za-z_]\w*)|%""",
    re.DOTALL,
)


def to_pyformat(text: str) -> str:
    """`text` with its `:name` parameters as psycopg's `%(name)s`, and every literal `%` doubled."""

    def replace(match: re.Match[str]) -> str:
        if match.group("skip") is not None:
            return match.group("skip").replace("%", "%%")
        if match.group("name") is not None:
            return f"%({match.group('name')})s"
        return "%%"

    return _TOKENS.sub(replace, text)


def load_queries() -> dict[str, str]:
    """The `-- name: x` blocks of every `.sql` file in `receiver/storage/sql/postgres/` (migrations aside), in
    psycopg's parameter style; a name defined twice is an error."""
    queries: dict[str, str] = {}
    folder = resources.files("receiver.storage.sql.postgres")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = _NAME.split(entry.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in queries:
                raise RuntimeError(f"query {name!r} is defined twice (second in {entry.name})")
            queries[name] = to_pyformat(body.strip().rstrip(";"))
    return queries


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every migration file, in order."""
    found = []
    for entry in resources.files("receiver.storage.sql.postgres.migrations").iterdir():
        match = re.match(r"^(\d+)_(\w+)\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


QUERIES = load_queries()
