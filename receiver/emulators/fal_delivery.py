"""Delivering the fal emulator's completion webhooks: body, Ed25519 headers, retries with backoff."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.emulators.fal_requests import DeliveryAttempt, DeliveryState, FalRequest
from receiver.ingest.signatures import sign_fal

ATTEMPT_TIMEOUT_S = 15.0
FIRST_RETRY_DELAY_S = 15.0
MAX_RETRY_DELAY_S = 1700.0
PAYLOAD_ERROR = (
    "Response payload is not JSON serializable. Either return a JSON serializable object "
    "or use the queue endpoint to retrieve the response."
)


def retry_delay_s(attempts_made: int, *, max_attempts: int, time_scale: float = 1.0) -> float | None:
    """Seconds to wait after `attempts_made` failed tries, or None to give up.

    15 s doubling up to 1700 s: the 10 retries after the first try ("it will retry 10 times in the span of
    2 hours", providers.md §2.3) wait 7005 s in all, so with their 15 s timeouts they end just inside 2 h.
    """
    if attempts_made >= max_attempts:
        return None
    exponent = min(max(attempts_made - 1, 0), 16)
    delay_s: float = min(FIRST_RETRY_DELAY_S * 2.0**exponent, MAX_RETRY_DELAY_S)
    return delay_s * time_scale


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


class WebhookSender:
    """Sends one request's webhook with fal's retry behaviour, recording every attempt on the request."""

    def __init__(
        self,
        *,
        client: Callable[[], httpx.AsyncClient],
        signing_key: Callable[[], Ed25519PrivateKey],
        rogue_key: Ed25519PrivateKey,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._signing_key = signing_key
        self._rogue_key = rogue_key
        self._clock = clock

    async def deliver(self, request: FalRequest) -> None:
        """Deliver (and, for duplicate_delivery, deliver again); sets `first_attempt_done` after try one."""
        config = request.config
        if request.webhook_url is None:
            request.delivery_state = DeliveryState.NOT_REQUESTED
            return
        if config.no_delivery:
            request.delivery_state = DeliveryState.SUPPRESSED
            return
        if config.late_delivery_s > 0:
            await asyncio.sleep(config.late_delivery_s)
        body = webhook_body(request)
        copies = 2 if config.duplicate_delivery else 1
        for delivery in range(1, copies + 1):
            delivered = await self._deliver_once(request, body, delivery=delivery)
            request.delivery_state = DeliveryState.DELIVERED if delivered else DeliveryState.GAVE_UP
            if not delivered:
                return

    async def _deliver_once(self, request: FalRequest, body: bytes, *, delivery: int) -> bool:
        config = request.config
        attempt = 0
        while True:
            attempt += 1
            ok = await self._attempt(request, body, delivery=delivery, attempt=attempt)
            request.first_attempt_done.set()
            if ok:
                return True
            delay_s = retry_delay_s(attempt, max_attempts=config.max_attempts, time_scale=config.time_scale)
            if delay_s is None:
                return False
            await asyncio.sleep(delay_s)

    async def _attempt(self, request: FalRequest, body: bytes, *, delivery: int, attempt: int) -> bool:
        assert request.webhook_url is not None  # checked by deliver()
        key = self._rogue_key if request.config.bad_signature else self._signing_key()
        now = self._clock()
        # Signed afresh on every try, so a late retry still carries a timestamp inside the window.
        headers = sign_fal(
            key, request_id=request.request_id, user_id=request.config.user_id, timestamp=int(now), body=body
        )
        headers["Content-Type"] = "application/json"
        record = DeliveryAttempt(delivery=delivery, attempt=attempt, at=now, timestamp=int(now))
        try:
            response = await self._client().post(
                request.webhook_url,
                content=body,
                headers=headers,
                timeout=ATTEMPT_TIMEOUT_S,
                follow_redirects=False,  # fal counts a 3xx as a failed delivery
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            record.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        else:
            record.status_code = response.status_code
        request.deliveries.append(record)
        return record.ok
