"""Keeping credentials that live in notification URLs out of error strings and log lines.

A Telegram bot token sits in the URL path (`/bot<token>/sendPhoto`), and so do the secret parts of
Slack (`/services/T…/B…/<secret>`) and Discord (`/api/webhooks/<id>/<token>`) webhook URLs; a query
string may carry a token too. httpx logs every request URL at INFO, so its logger gets a filter as well.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
_PATTERNS = (
    (re.compile(r"/bot[^/\s?#\"']*:[^/\s?#\"']+"), "/bot" + REDACTED),
    (re.compile(r"(/api/webhooks/[^/\s?#\"']+/)[^/\s?#\"']+"), r"\1" + REDACTED),
    (re.compile(r"(/services/)[^\s?#\"']+"), r"\1" + REDACTED),
    (re.compile(r"(https?://[^\s?#\"']+)\?[^\s#\"']+"), r"\1?" + REDACTED),
)


def redact(text: str, *secrets: str | None) -> str:
    """`text` with URL-borne credentials replaced, and every one of `secrets` (exact strings) too."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message and arguments through `redact` (httpx passes the URL as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted_arg(arg) for arg in record.args)
        return True


def _redacted_arg(arg: object) -> object:
    """The argument itself unless its text holds a credential (so `%d` and `%r` still format as before)."""
    if arg is None or isinstance(arg, int | float):
        return arg
    text = str(arg)
    cleaned = redact(text)
    return arg if cleaned == text else cleaned


def install_log_redaction(logger_name: str = "httpx") -> None:
    """Add a RedactingFilter to `logger_name` once (idempotent; filters live on the logger, not handlers)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(existing, RedactingFilter) for existing in logger.filters):
        logger.addFilter(RedactingFilter())
