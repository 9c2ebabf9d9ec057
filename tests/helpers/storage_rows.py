"""Rows the storage contract tests hang their checks on, written through the stores (never a driver), so a
new backend runs them unchanged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from receiver.storage import jobs, subscriptions
from receiver.storage.base import Transaction

T0 = 1_760_000_000.0  # the tests' "now" (Unix s)

AddJob = Callable[..., Awaitable[str]]  # the `add_job` fixture of tests/storage/conftest.py


def insert_job(tx: Transaction, job_id: str, *, provider: str = "fal", now: float = T0, **fields: Any) -> None:
    """A pending job row, inside a transaction body (`model`, `input`, `metadata`, `callback_url` default)."""
    values: dict[str, Any] = {"model": "m", "input": {}, "metadata": None, "callback_url": None, **fields}
    jobs.insert(tx, job_id, provider=provider, now=now, **values)


def insert_subscription(tx: Transaction, sub_id: str, *, kind: str = "webhook", now: float = T0) -> None:
    """An active subscription of `kind`, its columns derived from its id."""
    subscriptions.insert_subscription(
        tx, sub_id, kind=kind, url=f"https://hooks.example/{sub_id}", config='{"chat_id":"1"}',
        events='["job.succeeded"]', filter='{"provider":"fal"}', secret=f"sealed-{sub_id}", now=now,
    )  # fmt: skip
