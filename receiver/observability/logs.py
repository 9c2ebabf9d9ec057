"""Log lines: human text or one JSON object per line (`RECEIVER_LOG_FORMAT`), with the ids of what the code is
handling bound to them (job id, provider, request id, task kind).

The standard library is enough: the ids live in `ContextVar`s that the code handling a request or a task sets
once (the request's ASGI scope; a task's ids with `bind`), and a `Formatter` reads them only when a line is
written, so a request that logs nothing pays one `ContextVar.set` for them. Every handler keeps the redaction
filter (`receiver.notify.redaction`): the formatter writes what the filter left.
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
    """The fields of a line logged here: the request's (`request_fields`), then those bound in this context."""
    fields = _FIELDS.get()
    if _REQUEST.get() is None:
        return fields
    return {**request_fields(), **fields}


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
        for name, value in bound().items():
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
        fields = bound()
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


# --- requests -------------------------------------------------------------------------------------------------

_REQUEST: ContextVar[Scope | None] = ContextVar("receiver_log_request", default=None)
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_PREFIX = os.urandom(3).hex()
_COUNTER = itertools.count(1)
_ID_KEY = "receiver.request_id"  # where a request's id is kept in its ASGI scope once a line asked for it
WEBHOOKS = "/webhooks/"


class RequestContext:
    """Marks the HTTP request this context handles; nothing more on the request path (a webhook is answered in
    well under a millisecond). The lines logged while handling it get its ids, worked out when the first one is
    written (`request_fields`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            _REQUEST.set(scope)  # this request's own asyncio task: no reset needed
        await self.app(scope, receive, send)


def request_fields() -> dict[str, str]:
    """The ids of the request being handled: `request_id` (the client's `X-Request-Id` when it is a short token,
    else one made here from this process's random prefix and a counter), and on a webhook its `provider` and
    `job_id` (from the path, when they are short tokens)."""
    scope = _REQUEST.get()
    if scope is None:
        return {}
    request_id = scope.get(_ID_KEY)
    if request_id is None:
        given = next((value for key, value in scope["headers"] if key == b"x-request-id"), b"").decode("latin-1")
        request_id = scope[_ID_KEY] = given if _TOKEN.fullmatch(given) else f"{_PREFIX}-{next(_COUNTER):x}"
    fields = {"request_id": request_id}
    path: str = scope.get("path", "")
    if path.startswith(WEBHOOKS):
        provider, _, job_id = path[len(WEBHOOKS) :].partition("/")
        if _TOKEN.fullmatch(provider) and _TOKEN.fullmatch(job_id):
            fields.update(provider=provider, job_id=job_id)
    return fields
