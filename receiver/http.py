"""The HTTP edge: the one JSON error shape, bearer auth, and capped body reading."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.errors import (
    AuthError,
    InputError,
    PayloadTooLargeError,
    ReceiverError,
    RejectError,
    RetryLaterError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger(__name__)
MAX_JSON_DEPTH = 64  # far beyond any provider's input; deeper would reach Python's recursion limit downstream
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def on_receiver_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ReceiverError)
    headers = None
    if isinstance(exc, RetryLaterError) and exc.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    if isinstance(exc, AuthError):
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(exc.status_code, exc.code, exc.message, headers)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error; see the server log")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ReceiverError: on_receiver_error,
    HTTPException: on_http_exception,
    Exception: on_unexpected,
}


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes `max_bytes` (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > max_bytes):
        raise PayloadTooLargeError(f"body is larger than {max_bytes} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLargeError(f"body is larger than {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody is left to answer; a ReceiverError keeps this out of the unhandled-error log.
        log.debug("client disconnected before its body was complete: %s %s", request.method, request.url.path)
        raise RejectError("the client disconnected before the body was complete", code="client_disconnected") from None
    return b"".join(chunks)


async def read_json(request: Request, max_bytes: int) -> Any:
    content_type = request.headers.get("content-type", "")
    if content_type and "json" not in content_type:
        raise UnsupportedMediaTypeError(f"content-type must be application/json, not {content_type!r}")
    body = await read_body(request, max_bytes)
    try:
        text = body.decode()  # strict UTF-8 (RFC 8259): json.loads(bytes) would let encoded surrogates through
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise InputError(f"body is not valid JSON: {exc}", code="malformed_json") from None
    except RecursionError:
        raise InputError(f"body is nested deeper than {MAX_JSON_DEPTH} levels", code="malformed_json") from None
    check_json_value(value, surrogates="\\u" in text)
    return value


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON does not have; a stored NaN could not be served back.
    raise ValueError(f"{name} is not a JSON value")


def check_json_value(value: Any, *, surrogates: bool) -> None:
    """Refuse nesting deeper than `MAX_JSON_DEPTH`, and (when `surrogates`) strings holding an unpaired
    `\\ud800`-`\\udfff` escape: JSON parses those, but no UTF-8 store or answer can carry them."""
    # Each entry: (value, depth, where) with `where` a (parent, key) chain, formatted only for an error.
    pending: list[tuple[Any, int, Any]] = [(value, 0, None)]
    while pending:
        item, depth, where = pending.pop()
        if isinstance(item, str):
            if surrogates and not item.isascii() and not _encodable(item):
                raise InputError(f"{_path(where)}: holds an unpaired UTF-16 surrogate escape", code="malformed_json")
            continue
        if not isinstance(item, dict | list):
            continue
        if depth >= MAX_JSON_DEPTH:
            raise InputError(f"{_path(where)}: nested deeper than {MAX_JSON_DEPTH} levels", code="malformed_json")
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            if surrogates and isinstance(key, str) and not key.isascii() and not _encodable(key):
                raise InputError(
                    f"{_path(where)}: a key holds an unpaired UTF-16 surrogate escape", code="malformed_json"
                )
            pending.append((child, depth + 1, (where, key)))


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _path(where: Any) -> str:
    """`input.images[0].url` from a (parent, key) chain; `body` for the root."""
    parts: list[str] = []
    while where is not None:
        where, key = where
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return "".join(reversed(parts)).lstrip(".") or "body"


class BearerAuth:
    """Requires `Authorization: Bearer <token>` on paths under `/v1` when a token is configured."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        # Stored images are content-addressed (the sha256 is the capability): chat services fetch them.
        open_path = path.startswith("/v1/images/") and scope.get("method") in ("GET", "HEAD")
        if self.expected is not None and scope["type"] == "http" and path.startswith("/v1") and not open_path:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = error_response(
                    401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
