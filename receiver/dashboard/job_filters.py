"""The jobs list's query string: filters, search and the page cursor, read leniently (a bad value is named
on the page and left out, never a JSON error) and written back into links."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from receiver.models import JobStatus

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_TEXT = 200  # a model name or search longer than this matches nothing we store
JOB_ID = re.compile(r"job_[0-9A-Z]{26}")
STATUSES = tuple(status.value for status in JobStatus)


def parse_time(raw: str) -> float | None:
    """A `datetime-local` value (`2026-11-30T14:05`, read as UTC) or an ISO 8601 time as Unix seconds."""
    moment = datetime.fromisoformat(raw.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:  # `0001-01-01T00:00+23:59` parses, but is no time a page could show again (year 0)
        return moment.astimezone(UTC).timestamp()
    except OverflowError:
        raise ValueError("out of range") from None


def time_value(epoch_s: float | None) -> str:
    """Unix seconds as a `datetime-local` input's value (UTC, to the minute)."""
    return "" if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M")


@dataclass(frozen=True)
class JobFilters:
    status: str | None = None
    provider: str | None = None
    model: str | None = None
    since: float | None = None
    until: float | None = None
    search: str | None = None
    cursor: str | None = None
    limit: int = PAGE_SIZE
    problems: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_query(cls, params: QueryParams, *, providers: tuple[str, ...]) -> JobFilters:
        problems: list[str] = []

        def text(name: str) -> str | None:
            value = (params.get(name) or "").strip()
            if not value:
                return None
            if len(value) > MAX_TEXT:
                problems.append(f"{name}: at most {MAX_TEXT} characters")
                return None
            return value

        def choice(name: str, allowed: tuple[str, ...]) -> str | None:
            value = text(name)
            if value is not None and value not in allowed:
                problems.append(f"{name}: one of {', '.join(allowed)}")
                return None
            return value

        def moment(name: str) -> float | None:
            value = text(name)
            if value is None:
                return None
            try:
                return parse_time(value)
            except ValueError:
                problems.append(f"{name}: a date and time such as 2026-11-30T14:05 (UTC)")
                return None

        cursor = text("cursor")
        if cursor is not None and not JOB_ID.fullmatch(cursor):
            problems.append("cursor: a job id")
            cursor = None
        limit, raw_limit = PAGE_SIZE, text("limit")
        if raw_limit is not None:
            digits = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4  # `0200000` is 200000
            if digits and 1 <= int(raw_limit) <= MAX_PAGE_SIZE:
                limit = int(raw_limit)
            else:
                problems.append(f"limit: a page size from 1 to {MAX_PAGE_SIZE}")
        return cls(
            status=choice("status", STATUSES),
            provider=choice("provider", providers),
            model=text("model"),
            since=moment("since"),
            until=moment("until"),
            search=text("q"),
            cursor=cursor,
            limit=limit,
            problems=tuple(problems),
        )

    @property
    def narrowed(self) -> bool:
        """Whether any filter or search is set (the cursor aside)."""
        narrowing = (self.status, self.provider, self.model, self.since, self.until, self.search)
        return any(value is not None for value in narrowing)

    def query(self, **changes: str | None) -> str:
        """This page's query string with `changes` (None drops a parameter)."""
        values: dict[str, str | None] = {
            "status": self.status,
            "provider": self.provider,
            "model": self.model,
            "since": time_value(self.since) or None,
            "until": time_value(self.until) or None,
            "q": self.search,
            "cursor": self.cursor,
            "limit": str(self.limit) if self.limit != PAGE_SIZE else None,
            **changes,
        }
        kept = {key: value for key, value in values.items() if value is not None}
        return "?" + urlencode(kept) if kept else ""

    def first_page(self) -> JobFilters:
        return replace(self, cursor=None)
