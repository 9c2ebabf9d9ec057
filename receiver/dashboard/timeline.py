"""A job's timeline for its page, from what is stored about it: the job row, the provider events in its inbox,
its stored images, its events and each delivery attempt. Also the raw provider payloads, shortened."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from receiver.dashboard.job_rows import error_text
from receiver.models import Job, RowLike

LONG_STRING_CHARS = 300  # a longer string in a payload (a base64 image) is shown as its head and its size
MAX_PAYLOAD_CHARS = 64 * 1024  # of each raw payload shown
INBOX_KINDS = {
    "webhook": "Webhook received and verified",
    "poll": "Polled the provider",
    "response": "Provider answered the call",
}


@dataclass(frozen=True, slots=True)
class Step:
    """One line of the timeline: when, what, and details (text only; the template escapes all of it)."""

    at: float | None
    label: str
    detail: str = ""
    kind: str = "info"  # info | ok | bad: how the line is marked


def _json(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def queue_position(body: Any) -> int | None:
    """fal's `queue_position` in a stored provider answer, if it holds one."""
    if isinstance(body, dict) and isinstance(body.get("queue_position"), int):
        return int(body["queue_position"])
    return None


def inbox_steps(rows: Sequence[RowLike]) -> list[Step]:
    steps = []
    for row in rows:
        label = INBOX_KINDS.get(row["kind"], f"Provider event ({row['kind']})")
        details = [f"outcome {row['outcome']}"]
        position = queue_position(_json(bytes(row["body"])))
        if position is not None:
            details.append(f"queue position {position}")
        kind = "ok" if row["outcome"] == "succeeded" else "bad" if row["outcome"] in ("failed", "cancelled") else "info"
        steps.append(Step(row["received_at"], label, ", ".join(details), kind))
    return steps


def image_steps(rows: Sequence[RowLike]) -> list[Step]:
    steps = []
    for row in rows:
        name = "Input image" if row["role"] == "input" else f"Output image {row['position'] + 1}"
        if row["sha256"]:
            facts = f"{row['width']} x {row['height']} {row['content_type']}, {row['bytes']} bytes"
            steps.append(Step(row["created_at"], f"{name} stored", facts, "ok"))
        else:
            steps.append(Step(row["created_at"], f"{name} not stored", str(row["error"] or ""), "bad"))
    return steps


def delivery_steps(deliveries: list[dict[str, Any]]) -> list[Step]:
    """Each delivery attempt, with its status code and latency; a delivery still waiting, or dead, too.
    Targets are named by subscription id (a URL may carry a secret)."""
    steps = []
    for delivery in deliveries:
        target = delivery["subscription_id"] or "the job's callback_url"
        for attempt in delivery["attempt_log"]:
            code, latency = attempt["status_code"], attempt["latency_ms"]
            parts = [f"HTTP {code}" if code is not None else "no answer"]
            if latency is not None:
                parts.append(f"{latency:.0f} ms")
            if attempt["error"]:
                parts.append(str(attempt["error"]))
            good = code is not None and 200 <= code < 300
            steps.append(
                Step(attempt["attempted_at"], f"Delivery to {target}", ", ".join(parts), "ok" if good else "bad")
            )
        if delivery["status"] == "dead":
            steps.append(Step(delivery["updated_at"], f"Delivery to {target} gave up (dead)", "", "bad"))
        elif delivery["status"] in ("pending", "failed") and delivery["next_attempt_at"] is not None:
            steps.append(Step(delivery["next_attempt_at"], f"Delivery to {target} next attempt", "", "info"))
    return steps


def job_timeline(
    job: Job,
    *,
    inbox: Sequence[RowLike],
    images: Sequence[RowLike],
    events: Sequence[RowLike],
    deliveries: list[dict[str, Any]],
) -> list[Step]:
    """Every step of the job, oldest first (steps at the same time keep the order of the flow)."""
    steps = [Step(job.created_at.timestamp(), "Created", f"{job.provider} {job.model}")]
    if job.submitted_at is not None:
        request = f"request {job.provider_request_id}" if job.provider_request_id else ""
        steps.append(Step(job.submitted_at.timestamp(), f"Submitted to {job.provider}", request))
    steps += inbox_steps(inbox)
    if job.completed_at is not None:
        kind = "ok" if job.status.value == "succeeded" else "bad"
        steps.append(
            Step(job.completed_at.timestamp(), f"Finished: {job.status.value}", error_text(job.error) or "", kind)
        )
    steps += image_steps(images)
    steps += [Step(row["created_at"], f"Event {row['type']} emitted", row["id"]) for row in events]
    steps += delivery_steps(deliveries)
    order = {id(step): index for index, step in enumerate(steps)}
    # To the millisecond: the job's own times went through `datetime` (microseconds), the rest did not.
    return sorted(steps, key=lambda step: (round(step.at, 3) if step.at is not None else math.inf, order[id(step)]))


def shortened(value: Any, depth: int = 0) -> Any:
    """`value` with each long string (a base64 image, a data URI) cut to its head and its size."""
    if isinstance(value, str) and len(value) > LONG_STRING_CHARS:
        return f"{value[:80]}… ({len(value)} characters)"
    if depth > 64:
        return value
    if isinstance(value, dict):
        return {key: shortened(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [shortened(item, depth + 1) for item in value]
    return value


def payload_text(body: bytes | str | None) -> str:
    """A raw provider payload as readable text: indented JSON with long strings cut, or the text itself."""
    if body is None:
        return ""
    raw = body if isinstance(body, str) else bytes(body).decode("utf-8", "replace")
    parsed = _json(raw)
    text = raw if parsed is None else json.dumps(shortened(parsed), indent=2, ensure_ascii=False)
    return text if len(text) <= MAX_PAYLOAD_CHARS else text[:MAX_PAYLOAD_CHARS] + "\n… (cut)"
