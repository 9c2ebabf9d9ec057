"""Outbound notifications: Standard Webhooks signing, and one delivery attempt to a webhook, a per-job
callback, Slack, Discord or Telegram (`send`), with the retry schedule (`next_delay`)."""

from __future__ import annotations

from receiver.notify.messages import ImageAttachment, Message, describe
from receiver.notify.signing import new_secret, sign, verify
from receiver.notify.targets import RETRY_SCHEDULE_S, Attempt, Target, TargetKind, next_delay, send

__all__ = [
    "RETRY_SCHEDULE_S",
    "Attempt",
    "ImageAttachment",
    "Message",
    "Target",
    "TargetKind",
    "describe",
    "new_secret",
    "next_delay",
    "send",
    "sign",
    "verify",
]
