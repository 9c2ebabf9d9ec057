"""What the route modules share: the services, query values read strictly, and paging."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import TypeVar

from starlette.requests import Request

from receiver.errors import InputError
from receiver.web.operations import TEXT, Param
from receiver.wiring import Services

DEFAULT_LIMIT = 50


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def page_params(maximum: int) -> tuple[Param, Param]:
    """`limit` (read by `parse_limit`) and `cursor`: the parameters of a paged listing."""
    limit = {"type": "integer", "minimum": 1, "maximum": maximum, "default": DEFAULT_LIMIT}
    cursor = Param("query", "cursor", TEXT, "`next_cursor` of the previous page.")
    return Param("query", "limit", limit, "Page size."), cursor


T = TypeVar("T")


def short_digits(raw: str | None, max_digits: int) -> int | None:
    """`raw` as an int when it is ASCII digits only, at most `max_digits` of them; else None. The length check
    comes before `int`, which refuses digit runs over 4300 characters with a ValueError; `str.isdigit` alone
    lets through "²"."""
    if raw is not None and raw.isascii() and raw.isdigit() and len(raw) <= max_digits:
        return int(raw)
    return None


def parse_limit(raw: str | None, maximum: int) -> int:
    """A page size from the query string (DEFAULT_LIMIT when absent)."""
    if raw is None:
        return DEFAULT_LIMIT
    limit = short_digits(raw, 6)
    if limit is not None and 1 <= limit <= maximum:
        return limit
    raise InputError(f"limit: must be an integer from 1 to {maximum}")


def paged(rows: list[T], limit: int, cursor_of: Callable[[T], str]) -> tuple[list[T], str | None]:
    """A page from rows fetched with `limit + 1`: the first `limit`, and the next page's cursor (that of the
    page's last row) when there was one more."""
    page = rows[:limit]
    return page, cursor_of(page[-1]) if len(rows) > limit else None


def check_choice(name: str, value: object, allowed: Collection[str]) -> None:
    """InputError naming `name` unless `value` is None or one of `allowed`."""
    if value is not None and value not in allowed:
        raise InputError(f"{name}: must be one of {list(allowed)}")


def query_number(request: Request, name: str, *, meaning: str = "Unix seconds") -> float | None:
    """A finite number from the query string, or None when the parameter is absent."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"{name}: must be {meaning}")
    return value
