"""The health strip's context (`health`, shown by `_health.html` on the pages that pass it): queue depth and
oldest age per task kind, webhooks accepted and refused per provider and reason, provider error rates, and
the queue positions of the jobs waiting at fal.

Task queues, provider outcomes and queue positions are read from the database, so every web process shows the
same. Webhook counts are this process's `receiver_webhooks_total` counter (`receiver.observability.metrics`):
the webhooks this web process answered since it started (with several web processes, each shows its own;
`/metrics` of each, summed, is the whole).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from receiver.observability import metrics
from receiver.storage import dashboard
from receiver.wiring import Services

WINDOW_S = 3600.0  # provider error rates: the jobs finished in the last hour
QUEUE_ROWS = 5  # fal jobs listed with their queue position
QUEUE_PROVIDER = "fal"  # the provider whose queue tells a position


@dataclass(frozen=True, slots=True)
class WebhookCount:
    provider: str
    outcome: str  # accepted, duplicate, refused
    reason: str
    count: int


def webhook_counts() -> list[WebhookCount]:
    """This process's webhooks answered since it started, by provider, outcome and reason (none: an empty list)."""
    counts = []
    for metric in metrics.WEBHOOKS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:
                labels = sample.labels
                counts.append(WebhookCount(labels["provider"], labels["outcome"], labels["reason"], int(sample.value)))
    return sorted(counts, key=lambda c: (c.provider, c.outcome != "accepted", c.outcome, c.reason))


async def build_health(svc: Services) -> dict[str, Any]:
    """The `health` context of a page."""
    now = svc.clock()
    positions = []
    if QUEUE_PROVIDER in svc.providers:
        positions = await dashboard.queue_positions(svc.db, QUEUE_PROVIDER, limit=QUEUE_ROWS)
    return {
        "now": now,
        "window_s": WINDOW_S,
        "tasks": await dashboard.task_kinds(svc.db),
        "webhooks": webhook_counts(),
        "providers": await dashboard.provider_outcomes(svc.db, since=now - WINDOW_S),
        "queue_provider": QUEUE_PROVIDER,
        "queued": positions,
    }
