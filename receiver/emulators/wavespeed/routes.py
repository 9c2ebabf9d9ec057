"""HTTP routes of the WaveSpeed emulator: submit, result, webhook secret, CDN and control routes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.emulators.base import StoredFile, base_url, config_routes, key_matches
from receiver.emulators.wavespeed.config import WaveSpeedEmulatorConfig
from receiver.emulators.wavespeed.inputs import EditInput, InputRejected, parse_input
from receiver.emulators.wavespeed.predictions import Prediction
from receiver.emulators.wavespeed.uploads import MAX_UPLOAD_BYTES, UploadRejected, Uploads


class WaveSpeedBackend(Protocol):
    """What the routes ask of the emulator (`WaveSpeedEmulator` is the implementation)."""

    config: WaveSpeedEmulatorConfig

    @property
    def predictions(self) -> Mapping[str, Prediction]: ...
    @property
    def uploads(self) -> Uploads: ...
    def running(self) -> AbstractAsyncContextManager[None]: ...
    def take_submit_failure(self) -> int | None: ...
    def submit(
        self, *, model: str, version: str, edit: EditInput, webhook_url: str | None, base_url: str
    ) -> Prediction: ...
    def find(self, prediction_id: str) -> Prediction | None: ...
    async def wait_finished(self, prediction: Prediction, *, timeout_s: float) -> bool: ...
    def file(self, name: str) -> StoredFile | None: ...


VERSIONS = frozenset({"v2", "v3"})
# Injected submit failures: HTTP status -> envelope message (WaveSpeed's exact texts are not documented).
SUBMIT_FAILURES = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Insufficient balance",
    403: "Forbidden",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}
RETRY_AFTER_S = 1
SYNC_TIMED_OUT = "Sync mode timed out; poll urls.get for the result"
SYNC_TIMED_OUT_CODE = 5004  # the task error code of a timeout; the SDK reads it as "still running, poll"
RESERVED_OWNERS = frozenset({"media", "predictions", "webhook"})  # API paths, never model owners


def envelope(data: Any) -> JSONResponse:
    """WaveSpeed's success shape, also used for failed tasks: HTTP 200, `code` 200."""
    return JSONResponse({"code": 200, "message": "success", "data": data})


def error(
    status_code: int, message: str, *, headers: Mapping[str, str] | None = None, data: Any = None
) -> JSONResponse:
    """The `{code, message, data}` envelope with the HTTP status as `code`."""
    body = {"code": status_code, "message": message, "data": data}
    return JSONResponse(body, status_code=status_code, headers=headers)


def submit_failure(status_code: int) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status_code in {429, 503} else None
    return error(status_code, SUBMIT_FAILURES.get(status_code, "Emulated failure"), headers=headers)


def build_app(emulator: WaveSpeedBackend) -> Starlette:
    """The WaveSpeed emulator's Starlette app (its lifespan closes the emulator on shutdown)."""

    def unauthorized(request: Request) -> Response | None:
        if key_matches(request.headers.get("authorization", ""), scheme="Bearer", expected=emulator.config.api_key):
            return None
        return error(401, "Unauthorized")

    async def submit(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        version, model = request.path_params["version"], request.path_params["model"].strip("/")
        parts = model.split("/")
        if version not in VERSIONS or len(parts) < 2 or "" in parts:
            return error(404, "Not Found")
        if parts[0] in RESERVED_OWNERS:
            return error(404, f"Not Found: POST /api/{version}/{model} is not a model or an API route")
        if (status_code := emulator.take_submit_failure()) is not None:
            return submit_failure(status_code)
        try:
            edit = parse_input(json.loads(await request.body()), version=version)
        except InputRejected as exc:
            return error(400, str(exc))
        except ValueError as exc:
            return error(400, f"the request body is not valid JSON: {exc}")
        webhook_url = request.query_params.get("webhook") or None
        if webhook_url is not None and not webhook_url.startswith(("http://", "https://")):
            return error(400, "webhook must be an http(s) URL")
        prediction = emulator.submit(
            model=model, version=version, edit=edit, webhook_url=webhook_url, base_url=base_url(request)
        )
        data = prediction.data()
        if edit.enable_sync_mode:
            finished = await emulator.wait_finished(prediction, timeout_s=emulator.config.sync_timeout_s)
            data = prediction.data()
            if not finished:
                data["code"], data["error"] = SYNC_TIMED_OUT_CODE, SYNC_TIMED_OUT
        return envelope(data)

    async def result(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        if request.path_params["version"] not in VERSIONS:
            return error(404, "Not Found")
        if (found := emulator.find(request.path_params["prediction_id"])) is None:
            return error(404, "Prediction not found")
        return envelope(found.data())

    async def webhook_secret(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        return envelope({"secret": emulator.config.webhook_secret})

    async def upload_ticket(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        try:
            return envelope(emulator.uploads.open_ticket(json.loads(await request.body()), base_url(request)))
        except UploadRejected as exc:
            return error(400, str(exc))
        except ValueError as exc:
            return error(400, f"the request body is not valid JSON: {exc}")

    async def upload_put(request: Request) -> Response:
        # The ticket's URL stands in for a pre-signed storage URL: the ticket id is the credential.
        try:
            stored = emulator.uploads.put(request.path_params["ticket"], await request.body())
        except UploadRejected as exc:
            return error(400, str(exc))
        return Response(status_code=200) if stored else error(404, "upload ticket not found or already used")

    async def upload_binary(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        try:
            async with request.form(max_files=1, max_fields=8, max_part_size=MAX_UPLOAD_BYTES + 1) as form:
                file = form.get("file")
                if not isinstance(file, UploadFile):
                    raise UploadRejected("file is required (a multipart/form-data file part)")
                data = await file.read()
                answer = emulator.uploads.binary(file.filename or "upload", file.content_type, data, base_url(request))
        except UploadRejected as exc:
            return error(400, str(exc))
        except (HTTPException, MultiPartException) as exc:
            detail = exc.detail if isinstance(exc, HTTPException) else exc.message
            return error(400, f"malformed multipart body: {detail}")
        return envelope(answer)

    async def cdn_file(request: Request) -> Response:
        stored = emulator.file(request.path_params["name"])
        if stored is None:
            return error(404, "Not Found")
        return Response(stored.data, media_type=stored.content_type)

    async def list_predictions(request: Request) -> Response:
        summary = [{"id": p.id, "model": p.model, "status": p.status.value} for p in emulator.predictions.values()]
        return JSONResponse({"predictions": summary})

    async def show_prediction(request: Request) -> Response:
        found = emulator.predictions.get(request.path_params["prediction_id"])
        if found is None:
            return error(404, "Prediction not found")
        return JSONResponse(found.to_dict())

    async def http_error(request: Request, exc: Exception) -> Response:
        # Unknown paths and wrong methods keep the envelope shape.
        if not isinstance(exc, HTTPException):
            return error(500, "Internal Server Error")
        return error(exc.status_code, exc.detail, headers=exc.headers)

    prediction = "/api/{version}/predictions/{prediction_id}"
    routes = [
        Route("/cdn/{name}", cdn_file, methods=["GET"]),
        *config_routes(emulator, rejected=lambda exc: error(422, str(exc), data=exc.errors)),
        Route("/_emulator/predictions", list_predictions, methods=["GET"]),
        Route("/_emulator/predictions/{prediction_id}", show_prediction, methods=["GET"]),
        Route("/api/v3/webhook/secret", webhook_secret, methods=["GET"]),
        Route("/api/v3/media/upload/binary", upload_binary, methods=["POST"]),
        Route("/api/v3/media/uploads", upload_ticket, methods=["POST"]),
        Route("/uploads/{ticket}", upload_put, methods=["PUT"]),
        Route(prediction + "/result", result, methods=["GET"]),
        Route(prediction, result, methods=["GET"]),
        Route("/api/{version}/{model:path}", submit, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error},
        lifespan=lambda app: emulator.running(),
    )
