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


QUERIES = load_queries()
