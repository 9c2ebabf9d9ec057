"""Pools and lanes: slots of their own for some task kinds, and each provider's or target's share of them.

A pool is a set of task kinds with its own slots in the runner (provider calls, deliveries, and the
rest). A lane is the key a task is queued under inside its pool: the job's provider for job tasks,
the subscription (or, for per-job callback URLs, the host and port) for deliveries. A pool with a
`per_lane` cap never lets one lane hold more than that many leased tasks, across every runner, so a
provider or a target that hangs only ever holds its own lane's slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from receiver.storage import events, tasks
from receiver.storage.base import Transaction

PROVIDER_KINDS = frozenset({"submit", "poll", "cancel"})
DELIVERY_KINDS = frozenset({"deliver"})
IMAGE_KINDS = frozenset({"fetch_images"})
# The order a claim takes kinds in: work that finishes a job (its delivery, its event, its images) before
# work that polls or cancels one, before work that starts one; starting kinds also wait while finishing work
# is left behind for lack of slots (`receiver.storage.tasks.claim_round`).
CLAIM_ORDER = ("deliver", "notify", "fetch_images", "poll", "cancel", "submit")
STARTING_KINDS = frozenset({"submit"})


@dataclass(frozen=True, slots=True)
class Pool:
    """`concurrency`: tasks of these kinds one runner runs at once; `per_lane`: most leased tasks of one
    lane at once over all runners (None: no lane cap)."""

    name: str
    kinds: frozenset[str]
    concurrency: int
    per_lane: int | None = None


def callback_lane(url: str) -> str:
    """The lane (and circuit breaker) of a per-job callback URL: its host and port, shared by every job."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (443 if parts.scheme == "https" else 80)
    return f"callback:{host}:{port}"


def is_callback_lane(lane: str) -> bool:
    return lane.startswith("callback:")


def delivery_lane(subscription_id: str | None, url: str | None) -> str:
    if subscription_id:
        return subscription_id
    return callback_lane(url or "")


def queue_delivery(
    tx: Transaction,
    delivery_id: str,
    now: float,
    *,
    subscription_id: str | None = None,
    url: str | None = None,
) -> None:
    """Queue the `deliver` task of a delivery in its target's lane (looked up when not given)."""
    if subscription_id is None and url is None:
        row = events.get_delivery(tx, delivery_id)
        assert row is not None  # the caller has just requeued it
        subscription_id, url = row["subscription_id"], row["url"]
    lane = delivery_lane(subscription_id, url)
    tasks.insert(tx, "deliver", None, now, payload={"delivery_id": delivery_id}, lane=lane)
