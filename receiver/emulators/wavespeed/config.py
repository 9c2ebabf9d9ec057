"""Settings, fault switches and task error codes of the WaveSpeed emulator (re-exported by `wavespeed`)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, ClassVar

from pydantic import Field

from receiver.emulators.base import EmulatorConfig

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix every WaveSpeed secret has, not a secret
WEEK_S = 7 * 86400.0

# data.code -> data.error of a failed task (docs/providers.md#wavespeed-polling-statuses-and-errors; 1402's text
# is WaveSpeed's own).
TASK_ERRORS = {
    1200: "The content was flagged by the safety checker.",
    1400: "Missing required parameter.",
    1401: "Invalid parameter.",
    1402: "Failed to download image from the provided URL.",
    1403: "Task execution failed.",
    1405: "Task failed.",
    5000: "Internal server error",
    5003: "Service unavailable",
    5004: "Task timed out",
}


@dataclass(frozen=True, slots=True)
class TaskError:
    """Why a prediction failed: `data.code` and `data.error`."""

    code: int
    message: str

    @classmethod
    def of(cls, code: int, message: str | None = None) -> TaskError:
        return cls(code, message or TASK_ERRORS.get(code, f"Task failed with code {code}."))


def new_webhook_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(24)


class WaveSpeedEmulatorConfig(EmulatorConfig):
    """Timings and faults; a submitted prediction keeps a copy of the config it was submitted under.

    Two settings act on the whole account instead: `concurrency_limit` (read whenever a slot frees)
    and `webhook_secret` (read at every delivery attempt, as the secret belongs to the API key).
    """

    masked: ClassVar[tuple[str, ...]] = ("api_key", "webhook_secret")

    queue_s: float = Field(0.05, ge=0, description="Seconds a prediction stays `created`.")
    inference_s: float = Field(0.1, ge=0, description="Seconds a prediction stays `processing` (at least).")
    time_scale: float = Field(1.0, ge=0, description="Multiplies every webhook retry delay.")
    api_key: str | None = Field(
        None,
        repr=False,
        description="When set, `Authorization: Bearer <api_key>` must match; when None any non-empty Bearer passes.",
    )
    webhook_secret: str = Field(
        default_factory=new_webhook_secret,
        repr=False,
        pattern=r"^whsec_\S+$",
        description="The HMAC secret served by GET /api/v3/webhook/secret; a fresh one per config by default.",
    )
    no_delivery: bool = Field(False, description="Never send the webhook.")
    duplicate_delivery: bool = Field(
        False, description="Deliver the completion twice, as two events with their own webhook-id."
    )
    late_delivery_s: float = Field(0.0, ge=0, description="Wait this long before the first delivery.")
    bad_signature: bool = Field(False, description="Sign webhooks with a secret that is not the served one.")
    task_error_code: int | None = Field(
        None,
        ge=1000,
        le=5999,
        description="The next predictions fail with this data.code (see TASK_ERRORS for the messages).",
    )
    task_error_count: int = Field(
        1,
        ge=1,
        description="How many submits task_error_code applies to; each consumes one, then the code resets to None.",
    )
    submit_failures: list[Annotated[int, Field(ge=400, le=599)]] = Field(
        default_factory=list,
        description="HTTP statuses the next submits answer, in order, each consumed once.",
    )
    result_ttl_s: float = Field(WEEK_S, ge=0, description="How long a prediction and its outputs are kept.")
    cdn_ttl_s: float = Field(WEEK_S, ge=0, description="How long output files are served (at most result_ttl_s).")
    max_attempts: int = Field(5, ge=1, le=100, description="Webhook tries in total, per event.")
    concurrency_limit: int = Field(
        0, ge=0, description="Predictions processing at once; the rest stay `created` (0 = unlimited)."
    )
    sync_timeout_s: float = Field(
        60.0, ge=0, description="How long an enable_sync_mode submit waits before answering `processing`."
    )

    def take_task_error(self) -> TaskError | None:
        """Consume one use of the injected task error; None when predictions should run normally."""
        code = self.task_error_code
        if code is None:
            return None
        if self.task_error_count > 1:
            self.task_error_count -= 1
        else:
            self.task_error_code, self.task_error_count = None, 1
        return TaskError.of(code)
