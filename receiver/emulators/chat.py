"""A local stand-in for the chat services we notify: Slack incoming webhooks, Discord webhooks and the
Telegram Bot API (`sendPhoto`, `sendMessage`), recording every request, with switchable faults.

Routes: `POST /slack/{path}` (answers `ok`, text), `POST /discord/api/webhooks/{id}/{token}` (204),
`POST /telegram/bot{token}/sendPhoto|sendMessage` (`{"ok": true, "result": {...}}`), and the control
routes `POST /_emulator/config`, `GET /_emulator/requests`, `POST /_emulator/redirected` (where injected
redirects point, so a test can tell whether one was followed). Error bodies follow each service:
Slack's plain-text codes, Discord's `{"message", "code"}`, Telegram's `{"ok": false, "error_code",
"description"}`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from receiver.emulators.imaging import ImageError, image_size

__all__ = ["ChatEmulator", "RecordedRequest"]

MISSING_CHAT = "missing"  # the chat id Telegram answers "chat not found" for
SLACK_ERRORS = {400: "invalid_payload", 403: "action_prohibited", 404: "no_service", 410: "channel_is_archived"}
SLACK_ERRORS |= {429: "rate_limited", 500: "rollup_error"}
DISCORD_ERRORS = {400: ("Cannot send an empty message", 50006), 401: ("401: Unauthorized", 0)}
DISCORD_ERRORS |= {403: ("Missing Permissions", 50013), 404: ("Unknown Webhook", 10015)}
TELEGRAM_ERRORS = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
}
TELEGRAM_ERRORS |= {404: "Not Found", 409: "Conflict: terminated by other getUpdates request"}
CAPTION_UNITS, TEXT_UNITS = 1024, 4096


@dataclass
class RecordedRequest:
    """One request as the emulator saw it; `files` maps a form field to (filename, content type, bytes)."""

    service: str  # slack, discord, telegram or redirect
    path: str
    headers: dict[str, str]
    body: bytes = field(repr=False)
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, str, bytes]] = field(default_factory=dict, repr=False)
    status: int = 200  # what the emulator answered


class ChatConfigPatch(BaseModel):
    """The fields `POST /_emulator/config` may set; each one left out keeps its value."""

    model_config = ConfigDict(extra="forbid")

    fail_next: list[Annotated[int, Field(ge=300, le=599)]] | None = None
    retry_after_s: Annotated[int, Field(ge=0)] | None = None
    redirect_to: str | None = None
    telegram_token: str | None = None


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class ChatEmulator:
    """Record every request in `.received`; `fail_next` statuses are answered first, one per request."""

    def __init__(self, *, telegram_token: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.received: list[RecordedRequest] = []
        self.fail_next: list[int] = []
        self.retry_after_s: int | None = 1  # sent with injected 429/503 answers
        self.redirect_to = "/_emulator/redirected"  # Location of injected 3xx answers
        self.telegram_token = telegram_token  # when set, other tokens get 401 Unauthorized
        self.clock = clock
        self._message_id = 0
        self.app = Starlette(
            routes=[
                Route("/slack/{path:path}", self.slack, methods=["POST"]),
                Route("/discord/api/webhooks/{webhook_id}/{token}", self.discord, methods=["POST"]),
                Route("/telegram/bot{token}/{method}", self.telegram, methods=["POST"]),
                Route("/_emulator/config", self.config, methods=["POST"]),
                Route("/_emulator/requests", self.requests, methods=["GET"]),
                Route("/_emulator/redirected", self.redirected, methods=["GET", "POST"]),
            ]
        )

    def reset(self) -> None:
        """Forget what was received and clear the faults (the Telegram token and clock stay)."""
        self.received.clear()
        self.fail_next.clear()
        self.retry_after_s, self.redirect_to = 1, "/_emulator/redirected"

    def requests_for(self, service: str) -> list[RecordedRequest]:
        return [request for request in self.received if request.service == service]

    async def _record(self, service: str, request: Request) -> RecordedRequest:
        body = await request.body()
        parsed: Any = None
        form: dict[str, str] = {}
        files: dict[str, tuple[str, str, bytes]] = {}
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            async with request.form() as data:
                for name, value in data.multi_items():
                    if isinstance(value, UploadFile):
                        files[name] = (value.filename or "", value.content_type or "", await value.read())
                    else:
                        form[name] = value
        elif body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        record = RecordedRequest(service, request.url.path, dict(request.headers), body, parsed, form, files)
        self.received.append(record)
        return record

    @staticmethod
    def _answered(record: RecordedRequest, response: Response) -> Response:
        record.status = response.status_code
        return response

    def _fault(self, service: str) -> Response | None:
        if not self.fail_next:
            return None
        status = self.fail_next.pop(0)
        headers: dict[str, str] = {}
        if 300 <= status < 400:
            return Response(status_code=status, headers={"Location": self.redirect_to})
        if status in (429, 503) and self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        if service == "slack":
            return PlainTextResponse(SLACK_ERRORS.get(status, "error"), status_code=status, headers=headers)
        if service == "discord":
            if status == 429:
                body: dict[str, Any] = {"message": "You are being rate limited.", "retry_after": self.retry_after_s}
                body["global"] = False
            else:
                message, code = DISCORD_ERRORS.get(status, (f"{status}: Error", 0))
                body = {"message": message, "code": code}
            return JSONResponse(body, status_code=status, headers=headers)
        if status == 429:
            wait = self.retry_after_s or 1
            return _telegram_error(429, f"Too Many Requests: retry after {wait}", {"retry_after": wait})
        return _telegram_error(status, TELEGRAM_ERRORS.get(status, "Internal Server Error"), headers=headers)

    async def slack(self, request: Request) -> Response:
        record = await self._record("slack", request)
        fault = self._fault("slack")
        if fault is not None:
            return self._answered(record, fault)
        body = record.json
        if not isinstance(body, dict):
            return self._answered(record, PlainTextResponse("invalid_payload", status_code=400))
        if not body.get("text") and not body.get("blocks"):
            return self._answered(record, PlainTextResponse("no_text", status_code=400))
        return self._answered(record, PlainTextResponse("ok"))

    async def discord(self, request: Request) -> Response:
        record = await self._record("discord", request)
        fault = self._fault("discord")
        if fault is not None:
            return self._answered(record, fault)
        payload: Any = record.json
        if "payload_json" in record.form:
            try:
                payload = json.loads(record.form["payload_json"])
            except ValueError:
                payload = None
        if not isinstance(payload, dict):
            return self._answered(record, JSONResponse({"message": "Invalid Form Body", "code": 50035}, 400))
        if len(str(payload.get("content") or "")) > 2000:
            errors = {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer."}]}}
            body = {"message": "Invalid Form Body", "code": 50035, "errors": errors}
            return self._answered(record, JSONResponse(body, 400))
        if not payload.get("content") and not payload.get("embeds") and not record.files:
            return self._answered(record, JSONResponse({"message": "Cannot send an empty message", "code": 50006}, 400))
        return self._answered(record, Response(status_code=204))

    async def telegram(self, request: Request) -> Response:
        record = await self._record("telegram", request)
        fault = self._fault("telegram")
        if fault is not None:
            return self._answered(record, fault)
        return self._answered(record, self._telegram_answer(request, record))

    def _telegram_answer(self, request: Request, record: RecordedRequest) -> Response:
        token, method = request.path_params["token"], request.path_params["method"]
        if self.telegram_token is not None and not secrets.compare_digest(token, self.telegram_token):
            return _telegram_error(401, "Unauthorized")
        if method not in ("sendPhoto", "sendMessage"):
            return _telegram_error(404, "Not Found")
        fields: dict[str, Any] = dict(record.json) if isinstance(record.json, dict) else dict(record.form)
        chat_id = str(fields.get("chat_id") or "")
        if not chat_id:
            return _telegram_error(400, "Bad Request: chat_id is empty")
        if chat_id == MISSING_CHAT:
            return _telegram_error(400, "Bad Request: chat not found")
        self._message_id += 1
        chat_key = int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id
        result: dict[str, Any] = {
            "message_id": self._message_id,
            "date": int(self.clock()),
            "chat": {"id": chat_key, "type": "private" if isinstance(chat_key, int) else "channel"},
        }
        if method == "sendMessage":
            text = str(fields.get("text") or "")
            if not text:
                return _telegram_error(400, "Bad Request: message text is empty")
            if _utf16_units(text) > TEXT_UNITS:
                return _telegram_error(400, "Bad Request: message is too long")
            return JSONResponse({"ok": True, "result": {**result, "text": text}})
        caption = str(fields.get("caption") or "")
        if _utf16_units(caption) > CAPTION_UNITS:
            return _telegram_error(400, "Bad Request: message caption is too long")
        if "photo" not in record.files:
            return _telegram_error(400, "Bad Request: there is no photo in the request")
        data = record.files["photo"][2]
        try:
            width, height = image_size(data)
        except ImageError:
            return _telegram_error(400, "Bad Request: IMAGE_PROCESS_FAILED")
        file_id = secrets.token_urlsafe(24)
        photo = {"file_id": file_id, "file_unique_id": file_id[:12], "width": width, "height": height}
        result["photo"] = [{**photo, "file_size": len(data)}]
        if caption:
            result["caption"] = caption
        return JSONResponse({"ok": True, "result": result})

    async def redirected(self, request: Request) -> Response:
        record = await self._record("redirect", request)
        return self._answered(record, PlainTextResponse("redirect followed"))

    async def requests(self, request: Request) -> Response:
        """A summary of what was received (file bytes as sizes), for the demo and manual checks."""
        return JSONResponse(
            [
                {
                    "service": r.service,
                    "path": r.path,
                    "status": r.status,
                    "json": r.json,
                    "form": r.form,
                    "files": {
                        name: {"filename": f[0], "content_type": f[1], "bytes": len(f[2])}
                        for name, f in r.files.items()
                    },
                }
                for r in self.received
            ]
        )

    async def config(self, request: Request) -> Response:
        try:
            patch = ChatConfigPatch.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"error": {"code": "invalid_input", "message": str(exc)}}, status_code=422)
        for name, value in patch.model_dump(exclude_unset=True).items():
            setattr(self, name, value)
        return JSONResponse(
            {"fail_next": self.fail_next, "retry_after_s": self.retry_after_s, "redirect_to": self.redirect_to}
        )


def _telegram_error(
    status: int, description: str, parameters: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return JSONResponse(body, status_code=status, headers=headers)
