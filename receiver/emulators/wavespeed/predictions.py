"""Per-prediction state of the WaveSpeed emulator: status, outcome and the documents served (delivery: `WebhookJob`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from receiver.emulators.base import cut_short
from receiver.emulators.wavespeed.config import TaskError, WaveSpeedEmulatorConfig
from receiver.emulators.wavespeed.inputs import EditInput
from receiver.emulators.webhooks import WebhookJob


class PredictionStatus(StrEnum):
    CREATED = "created"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


TERMINAL = frozenset({PredictionStatus.COMPLETED, PredictionStatus.FAILED})


def iso_utc(at: float) -> str:
    """Unix seconds as WaveSpeed writes `created_at`: ISO 8601, milliseconds, `Z`."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Prediction(WebhookJob[WaveSpeedEmulatorConfig]):
    id: str
    model: str
    version: str  # "v3" or "v2": the API version of the submit, and so of urls.get
    input: EditInput
    created_at: float
    task_error: TaskError | None = None  # injected at submit by task_error_code
    status: PredictionStatus = PredictionStatus.CREATED
    inference_ms: int = 0
    outputs: list[str] = field(default_factory=list)
    error: TaskError | None = None

    @property
    def get_url(self) -> str:
        return f"{self.base_url}/api/{self.version}/predictions/{self.id}/result"

    def complete(self, *, at: float, outputs: list[str]) -> None:
        self.status, self.completed_at, self.outputs = PredictionStatus.COMPLETED, at, outputs

    def fail(self, *, at: float, error: TaskError) -> None:
        self.status, self.completed_at, self.error = PredictionStatus.FAILED, at, error

    def expired(self, now: float) -> bool:
        """Finished predictions are kept `result_ttl_s` from their creation, as WaveSpeed keeps them 7 days."""
        return self.status in TERMINAL and now - self.created_at >= self.config.result_ttl_s

    def data(self) -> dict[str, Any]:
        """The `data` of the submit and result envelopes."""
        completed = self.status is PredictionStatus.COMPLETED
        data: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "outputs": list(self.outputs),
            "urls": {"get": self.get_url},
            "has_nsfw_contents": [False] * len(self.outputs) if completed else [],
            "status": self.status.value,
            "created_at": iso_utc(self.created_at),
            "error": "",
            "timings": {"inference": self.inference_ms},
        }
        if self.error is not None:
            data["code"], data["error"] = self.error.code, self.error.message
        return data

    def webhook_document(self) -> dict[str, Any]:
        """The webhook body: the prediction without the envelope, plus `input`; `outputs` only when completed.
        As documented (docs/providers.md#wavespeed-webhooks) it has no `code`: a failure's code is only in the
        polled `data`."""
        document: dict[str, Any] = {"id": self.id, "model": self.model, "input": self.input.as_dict()}
        if self.status is PredictionStatus.COMPLETED:
            document["outputs"] = list(self.outputs)
        document["urls"] = {"get": self.get_url}
        document["has_nsfw_contents"] = [False] * len(self.outputs)
        document["status"] = self.status.value
        document["created_at"] = iso_utc(self.created_at)
        document["error"] = "" if self.error is None else self.error.message
        document["executionTime"] = self.inference_ms
        document["timings"] = {"inference": self.inference_ms}
        return document

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON for the control route (long inputs such as data URIs are cut short)."""
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "status": self.status.value,
            "prompt": self.input.prompt,
            "image": cut_short(self.input.image),
            "webhook_url": self.webhook_url,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "inference_ms": self.inference_ms,
            "outputs": list(self.outputs),
            "code": None if self.error is None else self.error.code,
            "error": None if self.error is None else self.error.message,
            "delivery_state": self.delivery_state.value,
            "deliveries": [attempt.to_dict() for attempt in self.deliveries],
        }
