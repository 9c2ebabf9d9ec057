"""Settings and fault switches of the fal emulator (re-exported by `receiver.emulators.fal`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from receiver.emulators.base import EmulatorConfig


class FalEmulatorConfig(EmulatorConfig):
    """Timings and faults; a submitted request keeps a copy of the config it was submitted under."""

    queue_s: float = Field(0.05, ge=0, description="Seconds a request stays IN_QUEUE.")
    inference_s: float = Field(0.1, ge=0, description="Seconds a request stays IN_PROGRESS (at least).")
    time_scale: float = Field(1.0, ge=0, description="Multiplies every webhook retry delay.")
    api_key: str | None = Field(
        None,
        repr=False,
        description="When set, `Authorization: Key <api_key>` must match; when None any `Key ...` passes.",
    )
    user_id: str = Field("emulator-user", min_length=1, description="Sent as X-Fal-Webhook-User-Id.")
    no_delivery: bool = Field(False, description="Never send the webhook.")
    duplicate_delivery: bool = Field(False, description="Deliver the same webhook twice.")
    late_delivery_s: float = Field(0.0, ge=0, description="Wait this long before the first delivery.")
    webhook_before_response: bool = Field(
        False, description="Run the job and the first delivery attempt before answering the submit."
    )
    bad_signature: bool = Field(False, description="Sign webhooks with a key that is not in the JWKS.")
    payload_error: bool = Field(
        False, description="Send `payload: null` with `payload_error`; the result endpoint still serves."
    )
    model_error: bool = Field(False, description="The model fails with a 422 and a `detail` list.")
    submit_failures: list[Annotated[int, Field(ge=400, le=599)]] = Field(
        default_factory=list,
        description="HTTP statuses the next submits answer, in order, each consumed once.",
    )
    ingress_failures: bool = Field(
        False, description="Injected 502/503/504 submit failures are the ingress's nginx page, not fal's JSON."
    )
    jwks_down: bool = Field(False, description="The JWKS route answers 503.")
    result_ttl_s: float = Field(3600.0, ge=0, description="How long a result is kept after completion.")
    large_result_ttl_s: float = Field(
        360.0, ge=0, description="How long a result of 10 KB or more is kept after completion."
    )
    cdn_ttl_s: float = Field(3600.0, ge=0, description="How long output files are served.")
    max_attempts: int = Field(
        11, ge=1, le=100, description="Webhook tries in total: the first and fal's documented 10 retries."
    )
