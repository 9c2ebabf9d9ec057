"""Keeping credentials that live in notification URLs out of error strings and log lines.

A Telegram bot token sits in the URL path (`/bot<token>/sendPhoto`), and so do the secret parts of
Slack (`/services/T…/B…/<secret>`) and Discord (`/api/webhooks/<id>/<token>`) webhook URLs; a query
string may carry a token too (our own webhook URLs carry `?token=`, also URL-encoded inside a submit's
`fal_webhook=`). httpx logs every request URL at INFO, so `redact_logs` puts the filter on every log handler
at start-up. Responses show Slack and Discord URLs through `display_url`: the secret part as `***`.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

REDACTED = "[redacted]"
_PATTERNS = (
    (re.compile(r"/bot[^/\s?#\"']*:[^/\s?#\"']+"), "/bot" + REDACTED),
    (re.compile(r"(/api/webhooks/[^/\s?#\"']+/)[^/\s?#\"']+"), r"\1" + REDACTED),
    (re.compile(r"(/services/)[^\s?#\"']+"), r"\1" + REDACTED),
    (re.compile(r"(https?://[^\s?#\"']+)\?[^\s#\"']+"), r"\1?" + REDACTED),
    (re.compile(r"(?i)(token(?:=|%3D))[^&\s\"'#%]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@\"'?#]+@"), r"\1" + REDACTED + "@"),  # URL user-info
)
HIDDEN = "***"
_SLACK_PATH = re.compile(r"^(.*/services/[^/]+/[^/]+/)[^/]+/?$")  # any prefix: a relay or emulator may add one
_DISCORD_PATH = re.compile(r"^(.*/api(?:/v\d+)?/webhooks/\d+/)[^/]+/?$")
LOGGERS = ("httpx", "uvicorn", "uvicorn.error", "uvicorn.access")


def redact(text: str, *secrets: str | None) -> str:
    """`text` with URL-borne credentials replaced, and every one of `secrets` (exact strings) too."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def display_url(kind: str, url: str | None) -> str | None:
    """`url` as responses and stored delivery rows show it: for Slack and Discord (whose webhook URL is the
    credential) the secret part becomes `***`, e.g. `https://hooks.slack.com/services/T000/B000/***`;
    a URL of another shape of those kinds keeps only its scheme and host. Other kinds come back unchanged."""
    if url is None or kind not in ("slack", "discord"):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return HIDDEN
    origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    match = (_SLACK_PATH if kind == "slack" else _DISCORD_PATH).match(parts.path)
    return f"{origin}{match.group(1)}{HIDDEN}" if match else f"{origin}/{HIDDEN}"


class RedactingFilter(logging.Filter):
    """Rewrites a record's message, arguments and traceback text through `redact` (httpx passes the URL as
    an argument; an exception's text may quote a URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted_arg(arg) for arg in record.args)
        if record.exc_info and not record.exc_text:
            # Formatters reuse a record's cached exc_text, so filling it here redacts the traceback too.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def _redacted_arg(arg: object) -> object:
    """The argument itself unless its text holds a credential (so `%d` and `%r` still format as before)."""
    if arg is None or isinstance(arg, int | float):
        return arg
    text = str(arg)
    cleaned = redact(text)
    return arg if cleaned == text else cleaned


def _add_filter(filterer: logging.Filterer) -> None:
    if not any(isinstance(existing, RedactingFilter) for existing in filterer.filters):
        filterer.addFilter(RedactingFilter())


def install_log_redaction(logger_name: str = "httpx") -> None:
    """Add a RedactingFilter to `logger_name` once (idempotent; filters live on the logger, not handlers)."""
    _add_filter(logging.getLogger(logger_name))


def redact_logs() -> None:
    """Redact every log line from now on: the root logger's handlers (everything that propagates) and the
    loggers that log URLs or keep their own handlers (httpx, uvicorn's). Call it right after configuring
    logging and before anything logs; idempotent. uvicorn replaces its own loggers' handlers when a server
    is configured, but keeps logger filters, so those go on the loggers."""
    for handler in logging.getLogger().handlers:
        _add_filter(handler)
    for name in LOGGERS:
        install_log_redaction(name)
