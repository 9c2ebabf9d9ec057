"""The HTTP edge: the one JSON error shape, bearer auth, and capped body reading."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.errors import (
    AuthError,
    InputError,
    PayloadTooLargeError,
    ReceiverError,
    RetryLaterError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger(__name__)
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
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"body is larger than {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, max_bytes: int) -> Any:
    content_type = request.headers.get("content-type", "")
    if content_type and "json" not in content_type:
        raise UnsupportedMediaTypeError(f"content-type must be application/json, not {content_type!r}")
    body = await read_body(request, max_bytes)
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise InputError(f"body is not valid JSON: {exc}", code="malformed_json") from None


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON does not have; a stored NaN could not be served back.
    raise ValueError(f"{name} is not a JSON value")


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
