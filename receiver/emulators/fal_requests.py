"""Per-request state of the fal emulator: queue status, logs, outcome and webhook delivery attempts."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from receiver.emulators.fal_config import FalEmulatorConfig
from receiver.emulators.fal_models import EditPlan

LARGE_RESULT_BYTES = 10 * 1024
SHOWN_INPUT_CHARS = 120


class RequestStatus(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class DeliveryState(StrEnum):
    NOT_REQUESTED = "not_requested"  # no fal_webhook on the submit
    PENDING = "pending"
    SUPPRESSED = "suppressed"  # the no_delivery fault
    DELIVERED = "delivered"
    GAVE_UP = "gave_up"


DELIVERY_DONE = frozenset(
    {DeliveryState.NOT_REQUESTED, DeliveryState.SUPPRESSED, DeliveryState.DELIVERED, DeliveryState.GAVE_UP}
)


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
class DeliveryAttempt:
    delivery: int  # 1, or 2 for the duplicate_delivery copy
    attempt: int
    at: float
    timestamp: int
    status_code: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(slots=True)
class FalRequest:
    request_id: str
    seq: int
    model_id: str
    app_id: str  # owner/app: the prefix of the status, result and cancel URLs
    plan: EditPlan
    config: FalEmulatorConfig
    webhook_url: str | None
    base_url: str  # scheme://host:port/prefix as the submitter saw it
    submitted_at: float
    status: RequestStatus = RequestStatus.IN_QUEUE
    started_at: float | None = None
    completed_at: float | None = None
    inference_time_s: float | None = None
    cancel_requested: bool = False
    output: dict[str, Any] | None = None
    failure: Failure | None = None
    result_size: int = 0
    logs: list[dict[str, str]] = field(default_factory=list)
    delivery_state: DeliveryState = DeliveryState.PENDING
    deliveries: list[DeliveryAttempt] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    first_attempt_done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

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
        image_url = self.plan.image_url
        if len(image_url) > SHOWN_INPUT_CHARS:
            image_url = image_url[:SHOWN_INPUT_CHARS] + "..."
        return {
            "request_id": self.request_id,
            "model_id": self.model_id,
            "status": self.status.value,
            "prompt": self.plan.prompt,
            "image_url": image_url,
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
            "deliveries": [
                {
                    "delivery": a.delivery,
                    "attempt": a.attempt,
                    "at": a.at,
                    "timestamp": a.timestamp,
                    "status_code": a.status_code,
                    "error": a.error,
                }
                for a in self.deliveries
            ],
        }
