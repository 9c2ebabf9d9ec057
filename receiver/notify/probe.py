"""A test notification, sent now to one subscription's target: how the target answers (nothing is stored)."""

from __future__ import annotations

from receiver.notify.delivery import Deliverer
from receiver.notify.subscriptions import Subscriptions
from receiver.notify.targets import Attempt, Message, send

EVENT_TYPE = "subscription.test"


async def send_test(subscriptions: Subscriptions, deliverer: Deliverer, sub_id: str) -> Attempt:
    """One `subscription.test` message to the subscription, through the same target rules, signing and SSRF
    guard as every delivery, once (no retry, no circuit breaker, no delivery row)."""
    row = await subscriptions.get(sub_id)
    now = deliverer.clock()
    payload = {"schema_version": 1, "id": f"evt_test_{int(now)}", "type": EVENT_TYPE, "data": {}}
    message = Message(
        webhook_id=f"msg_test_{int(now * 1000)}",
        event_type=EVENT_TYPE,
        payload=payload,
        text=f"receiver: test notification for subscription {sub_id}",
        image=None,
    )
    settings = deliverer.settings
    return await send(
        deliverer.http,
        deliverer.target_for(row),
        message,
        now=now,
        timeout_s=settings.notify_timeout_s,
        allow_private=settings.notify_allow_private,
        telegram_api_url=settings.telegram_api_url,
    )
