"""Delivering the WaveSpeed emulator's completion webhooks: body, HMAC `v3` headers, retries with backoff."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import httpx

from receiver.emulators.wavespeed_predictions import DeliveryAttempt, DeliveryState, Prediction
from receiver.ingest.signatures import sign_wavespeed

ATTEMPT_TIMEOUT_S = 10.0  # "needs a 2xx within 10 s" (docs/providers.md §3.3)
FIRST_RETRY_DELAY_S = 5.0
MAX_RETRY_DELAY_S = 600.0


def retry_delay_s(attempts_made: int, *, max_attempts: int, time_scale: float = 1.0) -> float | None:
    """Seconds to wait after `attempts_made` failed tries, or None to give up.

    WaveSpeed documents no retry policy; 5 s doubling (5, 10, 20, 40 s for the default five tries)
    is our stand-in, capped at 10 min for larger `max_attempts`.
    """
    if attempts_made >= max_attempts:
        return None
    exponent = min(max(attempts_made - 1, 0), 16)
    delay_s: float = min(FIRST_RETRY_DELAY_S * 2.0**exponent, MAX_RETRY_DELAY_S)
    return delay_s * time_scale


def webhook_body(prediction: Prediction) -> bytes:
    return json.dumps(prediction.webhook_document(), separators=(",", ":")).encode()


class WebhookSender:
    """Sends one prediction's webhook with retries, recording every attempt on the prediction."""

    def __init__(
        self,
        *,
        client: Callable[[], httpx.AsyncClient],
        secret: Callable[[], str],
        rogue_secret: str,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._secret = secret
        self._rogue_secret = rogue_secret
        self._clock = clock

    async def deliver(self, prediction: Prediction) -> None:
        """Deliver the finished prediction (twice, as two events, under duplicate_delivery)."""
        config = prediction.config
        if prediction.webhook_url is None:
            prediction.delivery_state = DeliveryState.NOT_REQUESTED
            return
        if config.no_delivery:
            prediction.delivery_state = DeliveryState.SUPPRESSED
            return
        if config.late_delivery_s > 0:
            await asyncio.sleep(config.late_delivery_s)
        body = webhook_body(prediction)
        copies = 2 if config.duplicate_delivery else 1
        for delivery in range(1, copies + 1):
            delivered = await self._deliver_event(prediction, body, delivery=delivery)
            prediction.delivery_state = DeliveryState.DELIVERED if delivered else DeliveryState.GAVE_UP
            if not delivered:
                return

    async def _deliver_event(self, prediction: Prediction, body: bytes, *, delivery: int) -> bool:
        config = prediction.config
        webhook_id = uuid.uuid4().hex  # one per event, kept by its retries so receivers can dedupe on it
        attempt = 0
        while True:
            attempt += 1
            record = await self._attempt(prediction, body, webhook_id=webhook_id, delivery=delivery, attempt=attempt)
            prediction.deliveries.append(record)
            if record.ok:
                return True
            delay_s = retry_delay_s(attempt, max_attempts=config.max_attempts, time_scale=config.time_scale)
            if delay_s is None:
                return False
            await asyncio.sleep(delay_s)

    async def _attempt(
        self, prediction: Prediction, body: bytes, *, webhook_id: str, delivery: int, attempt: int
    ) -> DeliveryAttempt:
        assert prediction.webhook_url is not None  # checked by deliver()
        secret = self._rogue_secret if prediction.config.bad_signature else self._secret()
        now = self._clock()
        # Signed afresh on every try, so a late retry still carries a timestamp inside the 300 s window.
        headers = sign_wavespeed(secret, webhook_id=webhook_id, timestamp=int(now), body=body)
        headers["Content-Type"] = "application/json"
        record = DeliveryAttempt(delivery=delivery, attempt=attempt, webhook_id=webhook_id, at=now, timestamp=int(now))
        try:
            response = await self._client().post(
                prediction.webhook_url,
                content=body,
                headers=headers,
                timeout=ATTEMPT_TIMEOUT_S,
                follow_redirects=False,  # a 3xx is a failed attempt, never followed
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            record.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        else:
            record.status_code = response.status_code
        return record
