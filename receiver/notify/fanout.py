"""Fan-out: a job event becomes one event row plus one delivery (and `deliver` task) per matching target.

Event payload, schema version 1 (documented in the README):

    {"schema_version": 1, "id": "evt_...", "type": "job.succeeded", "timestamp": "<ISO 8601 UTC>",
     "data": {"job": {"id", "provider", "model", "status", "provider_request_id", "metadata", "error",
                      "created_at", "completed_at", "images_status", "images_error",
                      "images": [{"sha256", "url", "content_type", "width", "height", "bytes", "source_url"}],
                      "input_image": {...same fields...} | null}}}
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from receiver.images.views import image_view
from receiver.models import IdFactory, Job, RowLike
from receiver.observability import metrics
from receiver.storage import events, images, jobs, subscriptions
from receiver.storage.base import Transaction
from receiver.tasks.lanes import queue_delivery

SCHEMA_VERSION = 1
EVENT_TYPES = ("job.succeeded", "job.failed", "job.cancelled")


def job_images(tx: Transaction, job_id: str, public_url: str) -> tuple[list[dict[str, Any]], Any]:
    """(output images, input image or None) of a job, as the API and events show them."""
    outputs, source = [], None
    for row in images.list_job_images(tx, job_id):
        if row["role"] == "output":
            outputs.append(image_view(row, public_url))
        else:
            source = image_view(row, public_url)
    return outputs, source


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()


def event_payload(
    tx: Transaction, job: Job, event_id: str, event_type: str, now: float, public_url: str
) -> dict[str, Any]:
    stored, source = job_images(tx, job.id, public_url)
    return {
        "schema_version": SCHEMA_VERSION,
        "id": event_id,
        "type": event_type,
        "timestamp": iso(now),
        "data": {
            "job": {
                "id": job.id,
                "provider": job.provider,
                "model": job.model,
                "status": job.status.value,
                "provider_request_id": job.provider_request_id,
                "metadata": job.metadata,
                "error": job.error,
                "created_at": job.created_at.isoformat(),
                "completed_at": job.completed_at.isoformat() if job.completed_at else None,
                "images_status": job.images_status,
                "images_error": job.images_error,
                "images": stored,
                "input_image": source,
            }
        },
    }


def matches(subscription: RowLike, event_type: str, job: Job) -> bool:
    """A subscription's event list and filter (`provider`, `model`, `metadata` key/values) against a job."""
    if event_type not in json.loads(subscription["events"]):
        return False
    rules = json.loads(subscription["filter"] or "{}")
    if rules.get("provider") and rules["provider"] != job.provider:
        return False
    if rules.get("model") and rules["model"] != job.model:
        return False
    wanted = rules.get("metadata") or {}
    have = job.metadata or {}
    return all(have.get(key) == value for key, value in wanted.items())


def emit_job_event(
    tx: Transaction, job_id: str, event_type: str, now: float, *, public_url: str, ids: IdFactory
) -> str:
    """Write the event and its deliveries (each with a `deliver` task); returns the event id."""
    job = jobs.get(tx, job_id)
    event_id = ids.new("evt", now)
    payload = event_payload(tx, job, event_id, event_type, now, public_url)
    events.insert_event(tx, event_id, event_type=event_type, job_id=job.id, payload=payload, now=now)
    targets: list[tuple[str | None, str, str | None]] = [
        (sub["id"], "subscription", sub["url"])
        for sub in subscriptions.active_subscriptions(tx)
        if matches(sub, event_type, job)
    ]
    if job.callback_url:
        targets.append((None, "callback", job.callback_url))
    for subscription_id, target, url in targets:
        delivery_id = ids.new("dlv", now)
        events.insert_delivery(
            tx,
            delivery_id,
            event_id=event_id,
            subscription_id=subscription_id,
            target=target,
            url=url,
            webhook_id=f"msg_{delivery_id[4:]}",
            now=now,
        )
        queue_delivery(tx, delivery_id, now, subscription_id=subscription_id, url=url)
    metrics.job_finished(job.provider, job.model, job.status.value, job.created_at, job.completed_at)
    return event_id
