"""The WaveSpeed emulator's completion webhooks: the prediction as body, HMAC `v3` headers, our retry schedule."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import httpx

from receiver.emulators.wavespeed.predictions import Prediction
from receiver.emulators.webhooks import RetrySchedule, WebhookSender
from receiver.ingest.signatures import sign_wavespeed

ATTEMPT_TIMEOUT_S = 10.0  # "needs a 2xx within 10 s" (docs/providers.md#wavespeed-webhooks)
# WaveSpeed documents no retry policy; 5 s doubling (5, 10, 20, 40 s for the default five tries) is our
# stand-in, capped at 10 min for larger `max_attempts`.
SCHEDULE = RetrySchedule(first_delay_s=5.0, max_delay_s=600.0)


def webhook_body(prediction: Prediction) -> bytes:
    return json.dumps(prediction.webhook_document(), separators=(",", ":")).encode()


class WaveSpeedWebhookSender(WebhookSender[Prediction]):
    """WaveSpeed's deliveries: one `webhook-id` per event, kept by its retries so receivers can dedupe on it;
    signed with the account's current secret (or a rogue one under bad_signature)."""

    schedule = SCHEDULE
    attempt_timeout_s = ATTEMPT_TIMEOUT_S

    def __init__(
        self,
        *,
        client: Callable[[], httpx.AsyncClient],
        secret: Callable[[], str],
        rogue_secret: str,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(client=client, clock=clock)
        self._secret = secret
        self._rogue_secret = rogue_secret

    def body(self, job: Prediction) -> bytes:
        return webhook_body(job)

    def new_event_id(self) -> str:
        return uuid.uuid4().hex

    def sign(self, job: Prediction, body: bytes, *, event_id: str | None, timestamp: int) -> dict[str, str]:
        assert event_id is not None  # new_event_id() always gives one
        secret = self._rogue_secret if job.config.bad_signature else self._secret()
        return sign_wavespeed(secret, webhook_id=event_id, timestamp=timestamp, body=body)
