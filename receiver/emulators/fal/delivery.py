"""The fal emulator's completion webhooks: fal's body, its Ed25519 headers and its retry schedule."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.emulators.fal.requests import FalRequest
from receiver.emulators.webhooks import RetrySchedule, WebhookSender
from receiver.ingest.signatures import sign_fal

ATTEMPT_TIMEOUT_S = 15.0
# 15 s doubling up to 1700 s: the 10 retries after the first try ("it will retry 10 times in the span of 2 hours",
# docs/providers.md#fal-delivery-and-retries) wait 7005 s in all, so with their 15 s timeouts they end just inside 2 h.
SCHEDULE = RetrySchedule(first_delay_s=15.0, max_delay_s=1700.0)
PAYLOAD_ERROR = (
    "Response payload is not JSON serializable. Either return a JSON serializable object "
    "or use the queue endpoint to retrieve the response."
)


def webhook_document(request: FalRequest) -> dict[str, Any]:
    """The JSON fal POSTs on completion: the OK, ERROR or payload_error form."""
    document: dict[str, Any] = {
        "request_id": request.request_id,
        "gateway_request_id": request.gateway_request_id,
    }
    if request.failure is not None:
        document["status"] = "ERROR"
        document["error"] = request.failure.webhook_error
        document["payload"] = request.failure.body
    elif request.config.payload_error:
        document.update(status="OK", payload=None, payload_error=PAYLOAD_ERROR)
    else:
        document.update(status="OK", payload=request.output)
    return document


def webhook_body(request: FalRequest) -> bytes:
    return json.dumps(webhook_document(request), separators=(",", ":")).encode()


class FalWebhookSender(WebhookSender[FalRequest]):
    """fal's deliveries: signed with the key the JWKS lists (or a rogue one under bad_signature)."""

    schedule = SCHEDULE
    attempt_timeout_s = ATTEMPT_TIMEOUT_S

    def __init__(
        self,
        *,
        client: Callable[[], httpx.AsyncClient],
        signing_key: Callable[[], Ed25519PrivateKey],
        rogue_key: Ed25519PrivateKey,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(client=client, clock=clock)
        self._signing_key = signing_key
        self._rogue_key = rogue_key

    def body(self, job: FalRequest) -> bytes:
        return webhook_body(job)

    def sign(self, job: FalRequest, body: bytes, *, event_id: str | None, timestamp: int) -> dict[str, str]:
        key = self._rogue_key if job.config.bad_signature else self._signing_key()
        return sign_fal(key, request_id=job.request_id, user_id=job.config.user_id, timestamp=timestamp, body=body)
