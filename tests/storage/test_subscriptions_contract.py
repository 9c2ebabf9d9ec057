"""Storage contract, subscriptions: create, rotate, disable, delete, failing marks, credentials, circuits,
and the scrubbed write that rewrites them.

Every test runs against each backend (`database`), through the stores and the `Database` API only.
"""

from __future__ import annotations

import pytest

from receiver.storage import events, subscriptions
from receiver.storage.base import Database, Row, Transaction
from tests.helpers.storage_rows import insert_subscription

NOW = 1_000.0


async def subscription(db: Database, sub_id: str) -> Row:
    row = await subscriptions.read_subscription(db, sub_id)
    assert row is not None
    return row


async def test_a_subscription_is_stored_as_given_and_listed_oldest_first(database: Database) -> None:
    """Create stores every column given; new ones are active, closed-circuit and not failing."""

    def write(tx: Transaction) -> None:
        insert_subscription(tx, "sub_b", now=NOW + 1)
        insert_subscription(tx, "sub_a", kind="slack", now=NOW)

    await database.write(write)
    row = await subscription(database, "sub_b")
    assert {key: row[key] for key in ("kind", "url", "config", "events", "filter", "secret", "created_at")} == {
        "kind": "webhook",
        "url": "https://hooks.example/sub_b",
        "config": '{"chat_id":"1"}',
        "events": '["job.succeeded"]',
        "filter": '{"provider":"fal"}',
        "secret": "sealed-sub_b",
        "created_at": NOW + 1,
    }
    assert (row["status"], row["disabled_reason"], row["failing_since"], row["circuit_state"]) == (
        "active", None, None, "closed"
    )  # fmt: skip
    assert [row["id"] for row in await subscriptions.list_subscriptions(database)] == ["sub_a", "sub_b"]
    assert await subscriptions.read_subscription(database, "sub_none") is None


async def test_rotation_keeps_the_old_secret_until_the_grace_ends(database: Database) -> None:
    """Rotate: the new secret is current, the old one is `previous_secret` until `grace_until`."""
    await database.write(lambda tx: insert_subscription(tx, "sub_1", now=NOW))
    await database.write(
        lambda tx: subscriptions.rotate_secret(tx, "sub_1", secret="new", grace_until=NOW + 60, now=NOW)
    )
    row = await subscription(database, "sub_1")
    assert (row["secret"], row["previous_secret"], row["previous_expires_at"], row["updated_at"]) == (
        "new", "sealed-sub_1", NOW + 60, NOW
    )  # fmt: skip


async def test_disable_keeps_the_first_reason_and_delete_is_disabled_for_good(database: Database) -> None:
    """A disabled subscription is no longer active (fan-out skips it) and keeps its first reason; a
    deleted one is disabled with reason `deleted` and stays readable."""

    def write(tx: Transaction) -> None:
        for sub_id in ("sub_1", "sub_2", "sub_3"):
            insert_subscription(tx, sub_id, now=NOW)
        subscriptions.disable_subscription(tx, "sub_1", reason="target is gone", now=NOW + 1)
        subscriptions.disable_subscription(tx, "sub_1", reason="later", now=NOW + 2)
        subscriptions.delete_subscription(tx, "sub_2", now=NOW + 3)

    await database.write(write)
    assert [(row["status"], row["disabled_reason"]) for row in await subscriptions.list_subscriptions(database)] == [
        ("disabled", "target is gone"),
        ("disabled", "deleted"),
        ("active", None),
    ]
    active = await database.write(subscriptions.active_subscriptions)
    assert [row["id"] for row in active] == ["sub_3"]


async def test_failing_since_is_the_first_failure_until_a_success(database: Database) -> None:
    """`mark_failing` keeps the first failure's time; `mark_succeeded` clears it."""
    await database.write(lambda tx: insert_subscription(tx, "sub_1", now=NOW))
    await database.write(lambda tx: subscriptions.mark_failing(tx, "sub_1", now=NOW + 1))
    await database.write(lambda tx: subscriptions.mark_failing(tx, "sub_1", now=NOW + 2))
    assert (await subscription(database, "sub_1"))["failing_since"] == NOW + 1
    await database.write(lambda tx: subscriptions.mark_succeeded(tx, "sub_1", now=NOW + 3))
    assert (await subscription(database, "sub_1"))["failing_since"] is None


async def test_credentials_are_read_and_rewritten_with_delivery_urls(database: Database) -> None:
    """The credential columns of every subscription, rewritten in place; chat delivery URLs still in the
    clear are found and replaced (a redacted one is not found again)."""

    def setup(tx: Transaction) -> None:
        insert_subscription(tx, "sub_hook", now=NOW)
        insert_subscription(tx, "sub_slack", kind="slack", now=NOW)
        events.insert_event(tx, "evt_1", event_type="job.succeeded", job_id=None, payload={}, now=NOW)
        for sub_id in ("sub_hook", "sub_slack"):
            events.insert_delivery(
                tx, f"dlv_{sub_id}", event_id="evt_1", subscription_id=sub_id, target="subscription",
                url=f"https://hooks.example/{sub_id}", webhook_id=f"msg_{sub_id}", now=NOW,
            )  # fmt: skip

    await database.write(setup)
    rows = await database.write(subscriptions.credentials)
    assert sorted(rows, key=lambda row: row["id"])[0] == {
        "id": "sub_hook",
        "kind": "webhook",
        "url": "https://hooks.example/sub_hook",
        "config": '{"chat_id":"1"}',
        "secret": "sealed-sub_hook",
        "previous_secret": None,
    }

    def rewrite(tx: Transaction) -> list[Row]:
        subscriptions.update_credentials(tx, "sub_hook", url="u", config="{}", secret="s2", previous_secret="p2")
        found = events.unredacted_chat_urls(tx)
        for row in found:
            events.set_delivery_url(tx, row["id"], "https://hooks.example/***")
        return found

    found = await database.write(rewrite)
    assert [(row["id"], row["url"], row["kind"]) for row in found] == [
        ("dlv_sub_slack", "https://hooks.example/sub_slack", "slack")
    ]
    assert await database.write(events.unredacted_chat_urls) == []
    row = await subscription(database, "sub_hook")
    assert (row["url"], row["config"], row["secret"], row["previous_secret"]) == ("u", "{}", "s2", "p2")


async def test_a_scrubbed_write_commits_or_rolls_back_like_a_write(database: Database) -> None:
    """`write_scrubbed` returns the body's result once committed; a body that raises leaves nothing."""
    await database.write(lambda tx: insert_subscription(tx, "sub_1", now=NOW))

    def fail(tx: Transaction) -> None:
        subscriptions.update_credentials(tx, "sub_1", url=None, config="{}", secret=None, previous_secret=None)
        raise LookupError("boom")

    with pytest.raises(LookupError, match="boom"):
        await database.write_scrubbed(fail)
    assert (await subscription(database, "sub_1"))["secret"] == "sealed-sub_1"

    def rewrite(tx: Transaction) -> int:
        subscriptions.update_credentials(tx, "sub_1", url=None, config="{}", secret="sealed", previous_secret=None)
        return 7

    assert await database.write_scrubbed(rewrite) == 7
    assert (await subscription(database, "sub_1"))["secret"] == "sealed"
    assert await database.write_scrubbed(lambda tx: len(subscriptions.credentials(tx))) == 1


# --- circuit breakers -----------------------------------------------------------------------------------


def circuit(row: Row | None) -> tuple[object, ...] | None:
    if row is None:
        return None
    return (
        row["circuit_state"],
        row["circuit_failures"],
        row["circuit_trips"],
        row["circuit_until"],
        row["circuit_error"],
    )


async def test_a_callback_hosts_circuit_is_created_then_updated(database: Database) -> None:
    """A target without a stored breaker reads None; saving creates it, saving again replaces it."""
    target = "callback:cb.example:443"
    assert await subscriptions.read_circuit(database, target, subscription=False) is None

    async def save(state: str, failures: int, trips: int, until: float | None, error: str | None) -> None:
        await database.write(
            lambda tx: subscriptions.save_circuit(
                tx, target, subscription=False, state=state, failures=failures, trips=trips, until=until,
                error=error, now=NOW,
            )
        )  # fmt: skip

    await save("open", 5, 1, NOW + 30, "timed out")
    assert circuit(await subscriptions.read_circuit(database, target, subscription=False)) == (
        "open", 5, 1, NOW + 30, "timed out"
    )  # fmt: skip
    await save("closed", 0, 0, None, None)
    in_write = await database.write(lambda tx: subscriptions.get_circuit(tx, target, subscription=False))
    assert circuit(in_write) == ("closed", 0, 0, None, None)
    assert await subscriptions.read_circuit(database, "callback:other:80", subscription=False) is None


async def test_a_subscriptions_circuit_lives_in_its_row(database: Database) -> None:
    """A subscription's breaker starts closed and is saved and read by its id (and shown in its row)."""
    await database.write(lambda tx: insert_subscription(tx, "sub_1", now=NOW))
    assert circuit(await subscriptions.read_circuit(database, "sub_1", subscription=True)) == (
        "closed", 0, 0, None, None
    )  # fmt: skip
    await database.write(
        lambda tx: subscriptions.save_circuit(
            tx, "sub_1", subscription=True, state="half_open", failures=6, trips=2, until=NOW + 5, error="refused",
            now=NOW,
        )
    )  # fmt: skip
    expected = ("half_open", 6, 2, NOW + 5, "refused")
    assert circuit(await subscriptions.read_circuit(database, "sub_1", subscription=True)) == expected
    assert (
        circuit(await database.write(lambda tx: subscriptions.get_circuit(tx, "sub_1", subscription=True))) == expected
    )
    assert circuit(await subscription(database, "sub_1")) == expected
    assert await subscriptions.read_circuit(database, "sub_1", subscription=False) is None
