"""Per-request state of the fal emulator: queue status, logs and outcome (delivery state: `WebhookJob`)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from receiver.emulators.base import cut_short
from receiver.emulators.fal.config import FalEmulatorConfig
from receiver.emulators.fal.models import EditPlan
from receiver.emulators.webhooks import WebhookJob

LARGE_RESULT_BYTES = 10 * 1024


class RequestStatus(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


@dataclass(frozen=True, slots=True)
class Failure:
    """How a request failed: what the result endpoint answers, the status fields and the webhook error."""

    status_code: int
    body: dict[str, Any]
    error: str
    error_type: str
    webhook_error: str

    @classmethod
    def validation(cls, field_name: str, msg: str, type_: str, *, status_code: int = 422) -> Failure:
        """A model-side error in fal's `{"detail": [...]}` shape."""
        item = {"loc": ["body", field_name], "msg": msg, "type": type_}
        return cls(status_code, {"detail": [item]}, msg, type_, f"Invalid status code: {status_code}")

    @classmethod
    def platform(cls, status_code: int, detail: str, error_type: str, *, webhook_error: str = "") -> Failure:
        """A platform error in fal's flat `{"detail", "error_type"}` shape."""
        body = {"detail": detail, "error_type": error_type}
        return cls(status_code, body, detail, error_type, webhook_error or f"Invalid status code: {status_code}")


CANCELLED = Failure.platform(400, "Request cancelled", "client_cancelled", webhook_error="Request cancelled")
INTERNAL = Failure.platform(500, "Internal server error", "internal_error")
MODEL_ERROR = Failure.validation("prompt", "Emulated model failure: the edit could not be applied", "model_error")


@dataclass(slots=True)
class FalRequest(WebhookJob[FalEmulatorConfig]):
    request_id: str
    seq: int
    model_id: str
    app_id: str  # owner/app: the prefix of the status, result and cancel URLs
    plan: EditPlan
    submitted_at: float
    status: RequestStatus = RequestStatus.IN_QUEUE
    inference_time_s: float | None = None
    cancel_requested: bool = False
    output: dict[str, Any] | None = None
    failure: Failure | None = None
    result_size: int = 0
    logs: list[dict[str, str]] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def gateway_request_id(self) -> str:
        return self.request_id  # fal's internal retries are not emulated, so the ids stay equal

    def log(self, message: str, *, at: float, level: str = "INFO") -> None:
        timestamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.logs.append({"message": message, "level": level, "source": "user", "timestamp": timestamp})

    def complete(self, *, at: float, output: dict[str, Any] | None = None, failure: Failure | None = None) -> None:
        self.status = RequestStatus.COMPLETED
        self.completed_at = at
        self.output, self.failure = output, failure
        served = output if failure is None else failure.body
        self.result_size = len(json.dumps(served, separators=(",", ":")).encode())

    def result_expired(self, now: float) -> bool:
        if self.completed_at is None:
            return False
        large = self.result_size >= LARGE_RESULT_BYTES
        ttl_s = self.config.large_result_ttl_s if large else self.config.result_ttl_s
        return now - self.completed_at > ttl_s

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON for the control route (long inputs such as data URIs are cut short)."""
        return {
            "request_id": self.request_id,
            "model_id": self.model_id,
            "status": self.status.value,
            "prompt": self.plan.prompt,
            "image_url": cut_short(self.plan.image_url),
            "webhook_url": self.webhook_url,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "inference_time_s": self.inference_time_s,
            "cancel_requested": self.cancel_requested,
            "output": self.output,
            "error": None if self.failure is None else self.failure.error,
            "error_type": None if self.failure is None else self.failure.error_type,
            "delivery_state": self.delivery_state.value,
            "deliveries": [attempt.to_dict() for attempt in self.deliveries],
        }
