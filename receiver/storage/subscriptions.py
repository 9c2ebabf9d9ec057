"""Subscriptions (with their credentials at rest) and the circuit breakers of delivery targets: every query on them.

Functions taking a `Transaction` run inside a caller's transaction body; the `async` ones read through the
`Database` (see `receiver.storage.base`). What the credential columns hold (sealed values) is
`receiver.notify.secrets`'s business: this module stores what it is given.
"""

from __future__ import annotations

from receiver.storage.base import Database, Row, Transaction

# --- subscriptions ------------------------------------------------------------------------------------


def insert_subscription(
    tx: Transaction,
    sub_id: str,
    *,
    kind: str,
    url: str | None,
    config: str,
    events: str,
    filter: str,
    secret: str | None,
    now: float,
) -> None:
    """A new active subscription; `config`, `events` and `filter` are JSON text."""
    tx.execute(
        "insert_subscription",
        id=sub_id,
        kind=kind,
        url=url,
        config=config,
        events=events,
        filter=filter,
        secret=secret,
        now=now,
    )


async def read_subscription(db: Database, sub_id: str) -> Row | None:
    return await db.one("select_subscription", id=sub_id)


async def list_subscriptions(db: Database) -> list[Row]:
    """Every subscription, active or not, oldest first."""
    return await db.all("list_subscriptions")


def active_subscriptions(tx: Transaction) -> list[Row]:
    """The active subscriptions, oldest first (a fan-out matches each against its event)."""
    return tx.all("select_active_subscriptions")


def delete_subscription(tx: Transaction, sub_id: str, *, now: float) -> None:
    """Deleted is disabled for good (reason `deleted`): its deliveries stay, none is sent any more."""
    tx.execute("delete_subscription", id=sub_id, now=now)


def rotate_secret(tx: Transaction, sub_id: str, *, secret: str | None, grace_until: float, now: float) -> None:
    """`secret` becomes the subscription's; the one it had stays valid (`previous_secret`) until `grace_until`."""
    tx.execute("rotate_subscription_secret", id=sub_id, secret=secret, grace_until=grace_until, now=now)


def disable_subscription(tx: Transaction, sub_id: str, *, reason: str, now: float) -> None:
    """An active subscription stops receiving; `reason` is shown. A disabled one keeps its first reason."""
    tx.execute("disable_subscription", id=sub_id, reason=reason, now=now)


def mark_succeeded(tx: Transaction, sub_id: str, *, now: float) -> None:
    """A delivery got through: the subscription is no longer failing."""
    tx.execute("subscription_succeeded", id=sub_id, now=now)


def mark_failing(tx: Transaction, sub_id: str, *, now: float) -> None:
    """A delivery failed: the subscription is failing since now, unless it already was."""
    tx.execute("subscription_failed", id=sub_id, now=now)


# --- credentials at rest ------------------------------------------------------------------------------


def credentials(tx: Transaction) -> list[Row]:
    """Every subscription's credential columns: id, kind, url, config, secret, previous_secret."""
    return tx.all("select_subscription_credentials")


def update_credentials(
    tx: Transaction,
    sub_id: str,
    *,
    url: str | None,
    config: str,
    secret: str | None,
    previous_secret: str | None,
) -> None:
    tx.execute(
        "update_subscription_credentials",
        id=sub_id,
        url=url,
        config=config,
        secret=secret,
        previous_secret=previous_secret,
    )


# --- circuit breakers ---------------------------------------------------------------------------------
# A subscription's breaker lives in its own row (`target` is its id); a per-job callback host's in
# `circuits` (`target` is its lane). Rows: circuit_state, circuit_failures, circuit_trips, circuit_until,
# circuit_error; None when the target has no stored breaker (closed).


def get_circuit(tx: Transaction, target: str, *, subscription: bool) -> Row | None:
    return tx.one("select_subscription_circuit" if subscription else "select_circuit", target=target)


async def read_circuit(db: Database, target: str, *, subscription: bool) -> Row | None:
    return await db.one("select_subscription_circuit" if subscription else "select_circuit", target=target)


def save_circuit(
    tx: Transaction,
    target: str,
    *,
    subscription: bool,
    state: str,
    failures: int,
    trips: int,
    until: float | None,
    error: str | None,
    now: float,
) -> None:
    """Store a target's breaker (a callback host's row is created on first use)."""
    tx.execute(
        "update_subscription_circuit" if subscription else "upsert_circuit",
        target=target,
        state=state,
        failures=failures,
        trips=trips,
        until=until,
        error=error,
        now=now,
    )
