"""The HTTP edge: the one JSON error shape and response class, bearer auth, capped body reading and parsing."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.errors import (
    AuthError,
    InputError,
    PayloadTooLargeError,
    ReceiverError,
    RejectError,
    RetryLaterError,
    UnsupportedMediaTypeError,
)
from receiver.support import jsontext
from receiver.web.schemas import Error, ErrorDetail

log = logging.getLogger(__name__)
MAX_JSON_DEPTH = jsontext.MAX_JSON_DEPTH
JSON_MEDIA_TYPE = "application/json"
INLINE_PARSE_BYTES = 256 * 1024  # smaller bodies are parsed on the event loop (well under a millisecond)
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


class JSONResponse(StarletteJSONResponse):
    """Every JSON answer: strict JSON that cannot fail to encode (see `jsontext.dumps`), so a request that
    committed is never turned into a 500 by what it stored. `content` is one of the models of
    `receiver.web.schemas` (its fields, in their order) or plain JSON values. An answer holding a long string
    (a job whose input carries a data-URI image) is encoded on a worker thread, in slices, when it is sent."""

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        if isinstance(content, BaseModel):
            content = content.model_dump()
        self.deferred = jsontext.holds_big_string(content)
        self.content = content
        super().__init__(content, status_code, headers, background=background)

    def render(self, content: Any) -> bytes:
        return b"" if self.deferred else jsontext.dumps(content)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.deferred:
            self.deferred = False
            self.body = await asyncio.to_thread(jsontext.dumps, self.content, big=True)
            length = str(len(self.body)).encode()
            self.raw_headers = [(k, length if k == b"content-length" else v) for k, v in self.raw_headers]
        await super().__call__(scope, receive, send)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = Error(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body, status_code=status, headers=headers)


def receiver_error_response(exc: ReceiverError) -> JSONResponse:
    """The answer for a `ReceiverError`: its status and code, `Retry-After` or `WWW-Authenticate` where due."""
    headers = None
    if isinstance(exc, RetryLaterError) and exc.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    if isinstance(exc, AuthError):
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(exc.status_code, exc.code, exc.message, headers)


async def on_receiver_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ReceiverError)
    return receiver_error_response(exc)


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


async def receive_body(receive: Receive, declared: str | None, max_bytes: int, *, path: str = "") -> bytes:
    """`read_body` for a plain ASGI app: the raw body from `receive`, refused with 413 as soon as it passes
    `max_bytes` (`declared`, the `Content-Length`, or streamed)."""
    if declared and declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > max_bytes):
        raise PayloadTooLargeError(f"body is larger than {max_bytes} bytes")
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):  # the whole body at once
        body: bytes = message.get("body", b"")
        if len(body) > max_bytes:
            raise PayloadTooLargeError(f"body is larger than {max_bytes} bytes")
        return body
    chunks, size = [], 0
    while message["type"] == "http.request":
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"body is larger than {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()
    log.debug("client disconnected before its body was complete: POST %s", path)
    raise RejectError("the client disconnected before the body was complete", code="client_disconnected")


async def read_json(request: Request, max_bytes: int) -> Any:
    """The body as strict JSON (see `receiver.support.jsontext`): 415 unless it is declared `application/json`,
    413 past `max_bytes`, 422 naming the field otherwise. Big bodies are parsed on a worker thread."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        # Exactly this type: a browser may send text/plain (or a form) cross-site with no preflight.
        shown = repr(media_type) if media_type else "missing"
        raise UnsupportedMediaTypeError(f"content-type must be application/json, not {shown}")
    body = await read_body(request, max_bytes)
    try:
        if len(body) <= INLINE_PARSE_BYTES:
            return jsontext.loads(body)
        return await asyncio.to_thread(jsontext.loads, body)  # BodyGate bounds how many run at once
    except jsontext.JSONShapeError as exc:
        raise InputError(str(exc), code="malformed_json") from None
    except UnicodeDecodeError:
        raise InputError("body is not UTF-8", code="malformed_json") from None
    except ValueError as exc:
        raise InputError(f"body is not valid JSON: {exc}", code="malformed_json") from None


class BodyGate:
    """Reads every request body under `/v1` before the app sees it, and lets one big body (over 256 KiB)
    at a time through the app: parsing, validating, storing and answering a 16 MB body costs a dozen
    copies of it in memory and tens of milliseconds of event loop per copy; several at once would add up.

    The body is read first, outside that slot, under a deadline (`body_timeout_s` per MiB begun, so a
    client must send at least 1 MiB per `body_timeout_s`): a client trickling its body keeps nothing but
    its own connection and answers 408. At most `max_buffered` big bodies are held at once (reading,
    waiting for the slot or in the app); past that a big body gets 503 `busy` before it is read, so
    memory stays bounded."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_json_bytes: int,
        body_timeout_s: float = 30.0,
        max_buffered: int = 4,
        slots: int = 1,
        wait_s: float = 30.0,
    ) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.body_timeout_s = body_timeout_s
        self.max_buffered = max_buffered
        self.buffered = 0  # big bodies held now (one event loop: a plain counter)
        self.slots = asyncio.Semaphore(slots)
        self.wait_s = wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        size = int(declared) if declared.isdigit() and len(declared) <= 18 else None
        if size == 0 or (size is None and b"transfer-encoding" not in headers):
            await self.app(scope, receive, send)  # no body: nothing to wait for (the SSE stream among them)
            return
        if size is not None and size > self.max_json_bytes:
            await self._too_large(scope, receive, send)
            return
        big = size is None or size > INLINE_PARSE_BYTES
        if big and self.buffered >= self.max_buffered:
            await self._busy(scope, receive, send)
            return
        self.buffered += big
        try:
            body = await self._read_body(scope, receive, send)
            if body is None:
                return  # answered (408 / 413), or the client went away
            if not big:
                await self.app(scope, _replay(body, receive), send)
                return
            try:
                await asyncio.wait_for(self.slots.acquire(), self.wait_s)
            except TimeoutError:
                await self._busy(scope, receive, send)
                return
            try:
                await self.app(scope, _replay(body, receive), send)
            finally:
                self.slots.release()
        finally:
            self.buffered -= big

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once the client has been answered (too slow, too large) or has gone."""
        chunks: list[bytes] = []
        received = 0
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(started + self.body_timeout_s) as deadline:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        log.debug("client disconnected before its body was complete: %s", scope.get("path"))
                        return None
                    chunk = message.get("body", b"")
                    received += len(chunk)
                    if received > self.max_json_bytes or not message.get("more_body", False):
                        break
                    chunks.append(chunk)
                    # One more `body_timeout_s` per MiB begun: a minimum rate, not a cap on big bodies.
                    deadline.reschedule(started + self.body_timeout_s * (1 + received // BODY_RATE_BYTES))
        except TimeoutError:
            why = (
                f"the request body did not arrive in time (at least 1 MiB per {self.body_timeout_s:g} s; "
                "RECEIVER_BODY_TIMEOUT_S)"
            )
            # Close: what is left of this body would trickle in as long again.
            await error_response(408, "request_timeout", why, {"Connection": "close"})(scope, receive, send)
            return None
        if received > self.max_json_bytes:
            await self._too_large(scope, receive, send)
            return None
        chunks.append(chunk)
        return b"".join(chunks)

    async def _busy(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = "too many large request bodies at once; try again"
        await error_response(503, "busy", message, {"Retry-After": "1"})(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The rest of the body is read and dropped by the server, so the client gets to read this answer.
        message = f"body is larger than {self.max_json_bytes} bytes"
        await error_response(413, "payload_too_large", message)(scope, receive, send)


BODY_RATE_BYTES = 1024 * 1024  # BodyGate's deadline grows by body_timeout_s per this many bytes received


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the body already read, then passes on (a disconnect, for a stream)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


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
