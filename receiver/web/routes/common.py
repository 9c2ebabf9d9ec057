"""What the route modules share: the services, query values read strictly, and the paging parameters."""

from __future__ import annotations

import math

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


def parse_limit(raw: str | None, maximum: int) -> int:
    """A page size from the query string (DEFAULT_LIMIT when absent). The length check comes first: `int`
    refuses digit runs over 4300 characters with a ValueError, and `str.isdigit` alone lets through "²"."""
    if raw is None:
        return DEFAULT_LIMIT
    if raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= maximum:
        return int(raw)
    raise InputError(f"limit: must be an integer from 1 to {maximum}")


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
