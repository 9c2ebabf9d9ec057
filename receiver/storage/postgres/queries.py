"""The PostgreSQL dialect's named SQL blocks (in psycopg's parameter style) and its numbered migrations."""

from __future__ import annotations

import re

from receiver.storage import sqlfiles

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
    """The named blocks of `receiver/storage/sql/postgres/` (see `receiver.storage.sqlfiles`), in psycopg's
    parameter style."""
    return sqlfiles.load_queries("postgres", to_pyformat)


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every migration file, in order."""
    return sqlfiles.migrations("postgres")


def notifies(queries: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """The LISTEN channels each named block wakes, for the blocks that insert into `tasks` or `events`
    (migration 0010: the writers notify, once a batch that ran one committed)."""
    found: dict[str, tuple[str, ...]] = {}
    for name, text in queries.items():
        code = _COMMENTS.sub("", text)
        channels = tuple(channel for channel, table in _NOTIFIED.items() if table.search(code))
        if channels:
            found[name] = channels
    return found


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_NOTIFIED = {
    "receiver_tasks": re.compile(r"\bINSERT\s+INTO\s+tasks\b", re.IGNORECASE),
    "receiver_events": re.compile(r"\bINSERT\s+INTO\s+events\b", re.IGNORECASE),
}
QUERIES = load_queries()
NOTIFIES = notifies(QUERIES)
