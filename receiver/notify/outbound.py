"""The HTTP request each kind of target gets for one message (pure: no I/O, the clock passed in).

Wire shapes: Slack incoming webhooks take JSON `text` + Block Kit `blocks`; Discord webhooks take JSON,
or multipart with `payload_json` and `files[n]` to upload; the Telegram Bot API takes `sendPhoto`
(multipart `chat_id`, `caption`, `photo`) or `sendMessage` (JSON `chat_id`, `text`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver.notify.messages import Message, truncate
from receiver.notify.signing import sign
from receiver.support import jsontext

USER_AGENT = "receiver-notify/1"
JSON = "application/json"
SLACK_SECTION_CHARS = 3000
SLACK_TEXT_CHARS = 40_000
SLACK_ALT_TEXT_CHARS = 2000
DISCORD_CONTENT_CHARS = 2000
DISCORD_TITLE_CHARS = 256
TELEGRAM_CAPTION_UNITS = 1024
TELEGRAM_TEXT_UNITS = 4096
TELEGRAM_PHOTO_MAX_BYTES = 10 * 1024 * 1024  # bigger photos are refused; the text still carries the URL
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """A POST to make: either `content` (with its Content-Type in `headers`) or multipart `data` + `files`."""

    url: str = field(repr=False)  # Slack, Discord and Telegram URLs carry credentials
    headers: dict[str, str]
    content: bytes | None = field(default=None, repr=False)
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = field(default=None, repr=False)


def compact_json(value: Any) -> bytes:
    return jsontext.dumps(value)  # never raises: non-finite numbers and lone surrogates are sanitized


def json_request(url: str, body: Any, headers: dict[str, str] | None = None) -> OutboundRequest:
    return OutboundRequest(url, {"Content-Type": JSON, "User-Agent": USER_AGENT, **(headers or {})}, compact_json(body))


def safe_filename(filename: str) -> str:
    """A name Discord accepts in `attachment://` references (letters, digits, `.`, `_`, `-`)."""
    return _UNSAFE_FILENAME.sub("_", filename.rsplit("/", 1)[-1]) or "image"


def webhook_request(url: str, secrets: Sequence[str], message: Message, *, now: float) -> OutboundRequest:
    """The JSON payload, compact, signed over those exact bytes (Standard Webhooks)."""
    body = compact_json(message.payload)
    signed = sign(secrets, msg_id=message.webhook_id, timestamp=int(now), body=body)
    return OutboundRequest(url, {"Content-Type": JSON, "User-Agent": USER_AGENT, **signed}, body)


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions (<!channel>); provider error text must not ping anyone.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_request(url: str, message: Message) -> OutboundRequest:
    text = _slack_escape(message.text)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, SLACK_SECTION_CHARS)}}
    ]
    image = message.image
    if image is not None and image.public_url:
        alt_text = truncate(f"{message.event_type}: {image.filename}", SLACK_ALT_TEXT_CHARS)
        blocks.append({"type": "image", "image_url": image.public_url, "alt_text": alt_text})
    return json_request(url, {"text": truncate(text, SLACK_TEXT_CHARS), "blocks": blocks})


def discord_request(url: str, message: Message) -> OutboundRequest:
    embed: dict[str, Any] = {"title": truncate(message.event_type, DISCORD_TITLE_CHARS)}
    payload: dict[str, Any] = {
        "content": truncate(message.text, DISCORD_CONTENT_CHARS),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},  # provider text must not ping @everyone
    }
    image = message.image
    if image is None:
        return json_request(url, payload)
    filename = safe_filename(image.filename)
    embed["description"] = f"{filename} ({image.content_type}, {len(image.data)} bytes)"
    embed["image"] = {"url": f"attachment://{filename}"}
    return OutboundRequest(
        url,
        {"User-Agent": USER_AGENT},
        data={"payload_json": compact_json(payload).decode()},
        files={"files[0]": (filename, image.data, image.content_type)},
    )


def telegram_method_url(api_url: str, bot_token: str, method: str) -> str:
    return f"{api_url.rstrip('/')}/bot{bot_token}/{method}"


def telegram_request(api_url: str, bot_token: str, chat_id: str, message: Message) -> OutboundRequest:
    image = message.image
    if image is None or len(image.data) > TELEGRAM_PHOTO_MAX_BYTES:
        text = truncate(message.text, TELEGRAM_TEXT_UNITS, utf16=True)
        return json_request(telegram_method_url(api_url, bot_token, "sendMessage"), {"chat_id": chat_id, "text": text})
    return OutboundRequest(
        telegram_method_url(api_url, bot_token, "sendPhoto"),
        {"User-Agent": USER_AGENT},
        data={"chat_id": chat_id, "caption": truncate(message.text, TELEGRAM_CAPTION_UNITS, utf16=True)},
        files={"photo": (safe_filename(image.filename), image.data, image.content_type)},
    )
