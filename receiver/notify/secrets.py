"""Subscription credentials at rest: sealed when written, opened only to send, legacy plaintext sealed at start-up.

Sealed (see `sealing`): the `secret` and `previous_secret` columns (webhook `whsec_` keys), the Telegram
`bot_token` and the Slack/Discord webhook URL, both inside the `config` JSON (for those two services the
URL is the credential). The `url` column keeps only the URL as `display_url` shows it (secret part `***`);
that is what list answers show and what delivery rows copy. Each value is bound to its subscription id
and field, so a sealed value moved to another row does not open.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from receiver.errors import SealedSecretError
from receiver.models import RowLike
from receiver.notify.redaction import display_url
from receiver.storage import events, subscriptions
from receiver.storage.base import Database, Transaction
from receiver.support.sealing import Sealer

log = logging.getLogger(__name__)
SEALED_URL_KINDS = ("slack", "discord")


def _context(sub_id: str, name: str) -> str:
    # Both secret columns share one context: rotation moves `secret` into `previous_secret` in SQL.
    return f"subscription {sub_id} {'secret' if name == 'previous_secret' else name}"


def seal_secret(sealer: Sealer, sub_id: str, secret: str | None) -> str | None:
    """The stored form of a subscription's `whsec_` secret."""
    return sealer.seal(secret, context=_context(sub_id, "secret")) if secret else None


def stored_fields(
    sealer: Sealer, sub_id: str, *, kind: str, url: str | None, secret: str | None, config: dict[str, Any]
) -> dict[str, Any]:
    """The `url`, `config` and `secret` columns of a new subscription, credentials sealed."""
    config = dict(config)
    if config.get("bot_token"):
        config["bot_token"] = sealer.seal(config["bot_token"], context=_context(sub_id, "bot_token"))
    if url and kind in SEALED_URL_KINDS:
        config["url"] = sealer.seal(url, context=_context(sub_id, "url"))
    return {
        "url": display_url(kind, url),
        "config": json.dumps(config, separators=(",", ":")),
        "secret": seal_secret(sealer, sub_id, secret),
    }


@dataclass(frozen=True)
class OpenedSubscription:
    """A subscription's target in the clear, for one send; kept out of reprs."""

    url: str | None = field(repr=False)
    secret: str | None = field(repr=False)
    previous_secret: str | None = field(repr=False)
    chat_id: str | None
    bot_token: str | None = field(repr=False)


def open_subscription(sealer: Sealer, row: RowLike) -> OpenedSubscription:
    """The credentials of a subscription row; SealedSecretError when no configured key opens one."""
    sub_id = row["id"]
    config = json.loads(row["config"] or "{}")

    def opened(value: str | None, name: str) -> str | None:
        return sealer.unseal(value, context=_context(sub_id, name)) if value else None

    url = opened(config.get("url"), "url") if row["kind"] in SEALED_URL_KINDS else row["url"]
    return OpenedSubscription(
        url=url or row["url"],
        secret=opened(row["secret"], "secret"),
        previous_secret=opened(row["previous_secret"], "previous_secret"),
        chat_id=config.get("chat_id"),
        bot_token=opened(config.get("bot_token"), "bot_token"),
    )


def _resealed(sealer: Sealer, value: str | None, context: str) -> str | None:
    """`value` sealed with the current key (it may be plaintext or under an old key); unchanged when it
    already is, or when no configured key opens it (logged: its deliveries fail until the key is added)."""
    if not value or not sealer.needs_reseal(value):
        return value
    try:
        return sealer.seal(sealer.unseal(value, context=context), context=context)
    except SealedSecretError as exc:
        log.warning("cannot re-seal: %s", exc.message)
        return value


def _resealed_row(sealer: Sealer, row: RowLike) -> dict[str, Any]:
    sub_id, kind = row["id"], row["kind"]
    config = json.loads(row["config"] or "{}")
    url = row["url"]
    if kind in SEALED_URL_KINDS and url and "url" not in config:
        config["url"], url = url, display_url(kind, url)  # written before sealing: the column held the URL
    for name in ("url", "bot_token"):
        if config.get(name):
            config[name] = _resealed(sealer, config[name], _context(sub_id, name))
    return {
        "id": sub_id,
        "url": url,
        "config": json.dumps(config, separators=(",", ":")),
        "secret": _resealed(sealer, row["secret"], _context(sub_id, "secret")),
        "previous_secret": _resealed(sealer, row["previous_secret"], _context(sub_id, "previous_secret")),
    }


def _seal_rows(tx: Transaction, sealer: Sealer) -> int:
    changed = 0
    for row in subscriptions.credentials(tx):
        new = _resealed_row(sealer, row)
        if any(new[name] != row[name] for name in ("url", "config", "secret", "previous_secret")):
            subscriptions.update_credentials(
                tx,
                new["id"],
                url=new["url"],
                config=new["config"],
                secret=new["secret"],
                previous_secret=new["previous_secret"],
            )
            changed += 1
    for row in events.unredacted_chat_urls(tx):
        events.set_delivery_url(tx, row["id"], display_url(row["kind"], row["url"]))
        changed += 1
    return changed


async def seal_stored_credentials(db: Database, sealer: Sealer) -> int:
    """Seal every credential stored in plaintext (rows written before sealing) or under an old key, and
    redact Slack/Discord URLs copied into delivery rows; returns the rows changed. Idempotent; run at
    start-up, before anything else writes. The old plaintext is scrubbed from storage
    (`Database.write_scrubbed`), so it is gone from disk, not only from the tables."""
    changed = await db.write_scrubbed(lambda tx: _seal_rows(tx, sealer))
    if changed:
        log.info("sealed the stored credentials of %d rows with key id %s", changed, sealer.key_id)
    return changed
