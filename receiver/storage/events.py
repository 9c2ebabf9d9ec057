"""Events (the live feed), deliveries and their attempt logs: every query on them.

Functions taking a `Transaction` run inside a caller's transaction body; the `async` ones read through the
`Database` (see `receiver.storage.base`). Rows are plain mappings of the tables' columns.
"""

from __future__ import annotations

import json
from typing import Any

from receiver.storage.base import Database, Row, Transaction


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- events -------------------------------------------------------------------------------------------


def insert_event(
    tx: Transaction, event_id: str, *, event_type: str, job_id: str | None, payload: Any, now: float
) -> None:
    """Append an event to the log (its `seq` is the live feed's id); an id stored already is a
    `UniqueViolation`. `payload` is stored as compact JSON. Run at the commit (`Transaction.execute_at_commit`):
    on PostgreSQL the insert takes the events' ordering lock, held to the commit's end; the transaction does
    not see the row (`deliveries.event_id` is checked at the commit)."""
    tx.execute_at_commit("insert_event", id=event_id, type=event_type, job_id=job_id, payload=_json(payload), now=now)


async def read_event(db: Database, event_id: str) -> Row | None:
    return await db.one("select_event", id=event_id)


async def events_after(db: Database, after: int, *, limit: int) -> list[Row]:
    """Up to `limit` events with `seq > after`, oldest first (seq, id, type, job_id, payload, created_at)."""
    return await db.all("list_events_after", after=after, limit=limit)


async def last_event_seq(db: Database) -> int:
    """The `seq` of the newest event (0 when there is none)."""
    return int(await db.value("last_event_seq") or 0)


# --- deliveries ---------------------------------------------------------------------------------------


def insert_delivery(
    tx: Transaction,
    delivery_id: str,
    *,
    event_id: str,
    subscription_id: str | None,
    target: str,
    url: str | None,
    webhook_id: str,
    now: float,
) -> None:
    """A pending delivery of an event to one target; a second one for the same event and target is a no-op.
    Queued (`Transaction.execute_later`): nothing reads its outcome."""
    tx.execute_later(
        "insert_delivery",
        id=delivery_id,
        event_id=event_id,
        subscription_id=subscription_id,
        target=target,
        url=url,
        webhook_id=webhook_id,
        now=now,
    )


def get_delivery(tx: Transaction, delivery_id: str) -> Row | None:
    return tx.one("select_delivery", id=delivery_id)


async def read_delivery(db: Database, delivery_id: str) -> Row | None:
    return await db.one("select_delivery", id=delivery_id)


async def delivery_exists(db: Database, delivery_id: str) -> bool:
    return await db.one("delivery_exists", id=delivery_id) is not None


def delivery_subscription_id(tx: Transaction, delivery_id: str) -> str | None:
    """The subscription a delivery goes to (None for a per-job callback, or no such delivery)."""
    value: str | None = tx.value("select_delivery_subscription", id=delivery_id)
    return value


def update_delivery(
    tx: Transaction,
    delivery_id: str,
    *,
    status: str,
    attempted: int,
    last_error: str | None,
    next_attempt_at: float | None,
    delivered_at: float | None,
    now: float,
) -> None:
    """Move a delivery to `status`, counting `attempted` more attempts (`delivered_at` kept when None)."""
    tx.execute(
        "update_delivery",
        id=delivery_id,
        status=status,
        attempted=attempted,
        last_error=last_error,
        next_attempt_at=next_attempt_at,
        delivered_at=delivered_at,
        now=now,
    )


def insert_attempt(
    tx: Transaction,
    *,
    delivery_id: str,
    now: float,
    status_code: int | None,
    latency_ms: float | None,
    error: str | None,
) -> None:
    """One line of a delivery's attempt log."""
    tx.execute(
        "insert_delivery_attempt",
        delivery_id=delivery_id,
        now=now,
        status_code=status_code,
        latency_ms=latency_ms,
        error=error,
    )


async def list_deliveries(
    db: Database,
    *,
    job_id: str | None = None,
    subscription_id: str | None = None,
    status: str | None = None,
    since: float | None = None,
    until: float | None = None,
    cursor: str | None = None,
    limit: int,
) -> list[Row]:
    """Deliveries matching every filter given, newest id first, ids below `cursor` (a page's last id); each
    row holds the columns of the API's delivery answer, no more."""
    return await db.all(
        "list_deliveries",
        job_id=job_id,
        subscription_id=subscription_id,
        status=status,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )


async def list_attempts(db: Database, delivery_id: str) -> list[Row]:
    """A delivery's attempt log, oldest first (attempted_at, status_code, latency_ms, error)."""
    return await db.all("list_delivery_attempts", delivery_id=delivery_id)


def requeue_delivery(tx: Transaction, delivery_id: str, *, now: float) -> bool:
    """Make a finished (failed, dead or delivered) delivery pending again; False when it is not finished."""
    return tx.execute("requeue_delivery", id=delivery_id, now=now) > 0


def requeue_deliveries_page(
    tx: Transaction,
    *,
    after: str,
    limit: int,
    now: float,
    job_id: str | None = None,
    subscription_id: str | None = None,
    status: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[Row]:
    """Bulk replay, one page: the first `limit` finished deliveries with an id above `after` that match
    every filter given become pending; returns their (id, subscription_id, url) in id order."""
    return tx.all(
        "requeue_deliveries_page",
        after=after,
        limit=limit,
        now=now,
        job_id=job_id,
        subscription_id=subscription_id,
        status=status,
        since=since,
        until=until,
    )


def unredacted_chat_urls(tx: Transaction) -> list[Row]:
    """Deliveries to Slack/Discord subscriptions whose row still holds the webhook URL in the clear
    (id, url, kind: the subscription's)."""
    return tx.all("select_unredacted_delivery_urls")


def set_delivery_url(tx: Transaction, delivery_id: str, url: str | None) -> None:
    tx.execute("update_delivery_url", id=delivery_id, url=url)
