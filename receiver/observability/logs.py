"""Log lines: human text or one JSON object per line (`RECEIVER_LOG_FORMAT`), with the ids of what the code is
handling bound to them (job id, provider, request id, task kind).

The standard library is enough: the ids live in a `ContextVar` that the code handling a request or a task sets
once (`bind`), and a `Formatter` reads it only when a line is written, so a request or a task that logs nothing
pays one dict merge for it. Every handler keeps the redaction filter (`receiver.notify.redaction`): the
formatter writes what the filter left.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Literal

from starlette.types import ASGIApp, Receive, Scope, Send

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_NONE: Mapping[str, str] = {}
_FIELDS: ContextVar[Mapping[str, str]] = ContextVar("receiver_log_fields", default=_NONE)


def bind(**fields: str | int | None) -> None:
    """Add `fields` (None values left out) to every line logged from here on in this context: the rest of this
    request's or this task's handling (each runs in an asyncio task of its own, with a context of its own)."""
    current = _FIELDS.get()
    _FIELDS.set({**current, **{name: str(value) for name, value in fields.items() if value is not None}})


def bound() -> Mapping[str, str]:
    """The fields bound in this context."""
    return _FIELDS.get()


class JSONFormatter(logging.Formatter):
    """One JSON object per line: `ts` (UTC, ISO 8601 with milliseconds), `level`, `logger`, `message`, the bound
    fields, and `exc` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in _FIELDS.get().items():
            line.setdefault(name, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, the bound fields after the message (`job_id=job_… provider=fal`)."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        fields = _FIELDS.get()
        if not fields:
            return text
        return text + " " + " ".join(f"{name}={value}" for name, value in fields.items())


def _iso(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


def formatter(log_format: LogFormat, text_format: str = TEXT_FORMAT) -> logging.Formatter:
    return JSONFormatter() if log_format == "json" else TextFormatter(text_format)


def configure_logging(level: str, *, log_format: LogFormat = "text", text_format: str = TEXT_FORMAT) -> None:
    """Log to stderr at `level` in `log_format`, through one root handler that everything propagates to
    (uvicorn's loggers too: `receiver.web.asgi_server.make_server` leaves their configuration alone). A later
    call replaces the format and level; as `logging.basicConfig`, nothing is added when the root logger has
    handlers of someone else's (a test runner's)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "receiver_handler", False)), None)
    if handler is None:
        if root.handlers:
            return
        handler = logging.StreamHandler()
        handler.receiver_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    handler.setFormatter(formatter(log_format, text_format))
    for name in ("uvicorn", "uvicorn.access"):
        logging.getLogger(name).propagate = True


# --- request ids --------------------------------------------------------------------------------------------

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
_PREFIX = os.urandom(3).hex()
_COUNTER = itertools.count(1)


class RequestContext:
    """Binds a `request_id` to every line logged while handling an HTTP request: the client's `X-Request-Id`
    when it is a short token, else one made here (this process's random prefix and a counter: cheap, unique
    per process)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = _header(scope, b"x-request-id")
            ok = given is not None and _REQUEST_ID.fullmatch(given)
            bind(request_id=given.decode() if ok and given else f"{_PREFIX}-{next(_COUNTER):x}")
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
