"""HTTP routes of the fal emulator: queue, JWKS, CDN and control routes, shaped as fal serves them."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from receiver.emulators.base import StoredFile, base_url, config_routes, key_matches
from receiver.emulators.fal.config import FalEmulatorConfig
from receiver.emulators.fal.models import EditPlan, InputRejected, parse_input
from receiver.emulators.fal.requests import FalRequest, RequestStatus


class FalBackend(Protocol):
    """What the routes ask of the emulator (`FalEmulator` is the implementation)."""

    config: FalEmulatorConfig
    clock: Callable[[], float]

    @property
    def requests(self) -> Mapping[str, FalRequest]: ...
    def running(self) -> AbstractAsyncContextManager[None]: ...
    def take_submit_failure(self) -> int | None: ...
    def submit(
        self, *, model_id: str, app_id: str, plan: EditPlan, webhook_url: str | None, base_url: str
    ) -> FalRequest: ...
    def queue_position(self, request: FalRequest) -> int: ...
    def cancel(self, request: FalRequest) -> bool: ...
    def file(self, name: str) -> StoredFile | None: ...
    def jwks(self) -> dict[str, Any]: ...
    def rotate_key(self) -> None: ...


# Injected submit failures: HTTP status -> (detail, error_type), in fal's platform error shape.
SUBMIT_FAILURES = {
    429: ("Too many requests", "rate_limited"),
    500: ("Internal server error", "internal_error"),
    502: ("Runner connection refused", "runner_connection_refused"),
    503: ("Runner scheduling failure", "runner_scheduling_failure"),
    504: ("Request timed out", "request_timeout"),
}
INGRESS_PAGES = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}
NOT_FOUND = {"status": "NOT_FOUND"}


def queue_urls(base: str, request: FalRequest) -> dict[str, str]:
    response_url = f"{base}/{request.app_id}/requests/{request.request_id}"
    return {
        "response_url": response_url,
        "status_url": f"{response_url}/status",
        "cancel_url": f"{response_url}/cancel",
    }


def submit_failure(status_code: int, *, ingress: bool = False) -> Response:
    """An injected submit failure in fal's platform error shape, retryable at once; with `ingress`, a
    502/503/504 is the nginx page fal's ingress answers (no X-Fal-Request-Id), as fal's client expects."""
    if ingress and status_code in INGRESS_PAGES:
        title = f"{status_code} {INGRESS_PAGES[status_code]}"
        page = f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center>"
        page += "<hr><center>nginx</center></body></html>"
        return HTMLResponse(page, status_code=status_code)
    detail, error_type = SUBMIT_FAILURES.get(status_code, ("Emulated failure", "internal_error"))
    headers = {"Retry-After": "0", "X-Fal-Error-Type": error_type}
    return JSONResponse({"detail": detail, "error_type": error_type}, status_code=status_code, headers=headers)


def check_key(emulator: FalBackend, request: Request) -> Response | None:
    """None when the `Authorization: Key ...` header passes; else fal's 401."""
    if key_matches(request.headers.get("authorization", ""), scheme="Key", expected=emulator.config.api_key):
        return None
    return JSONResponse({"detail": "Unauthorized"}, status_code=401)


async def read_input(emulator: FalBackend, request: Request, model_id: str) -> EditPlan | Response:
    """A submitted model input as a plan, or the answer fal gives instead (404, injected failure, 422)."""
    parts = model_id.split("/")
    if len(parts) < 2 or "" in parts:
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    if (status_code := emulator.take_submit_failure()) is not None:
        return submit_failure(status_code, ingress=emulator.config.ingress_failures)
    try:
        return parse_input(model_id, json.loads(await request.body()))
    except ValueError as exc:
        item = {"loc": ["body"], "msg": f"invalid JSON: {exc}", "type": "value_error.jsondecode"}
        return JSONResponse({"detail": [item]}, status_code=422)
    except InputRejected as exc:
        return JSONResponse({"detail": exc.detail}, status_code=422)


def result_response(found: FalRequest) -> Response:
    """A completed request's result: the model's output, or its error with the model's status code."""
    headers = {"X-Fal-Request-Id": found.request_id}
    if found.failure is not None:
        if isinstance(found.failure.body.get("error_type"), str):
            headers["X-Fal-Error-Type"] = found.failure.error_type
        return JSONResponse(found.failure.body, status_code=found.failure.status_code, headers=headers)
    return JSONResponse(found.output, headers=headers)


def serve_file(emulator: FalBackend, name: str) -> Response:
    """An output file from the emulator's CDN, or 404 once it expired."""
    stored = emulator.file(name)
    if stored is None:
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    return Response(stored.data, media_type=stored.content_type)


def build_app(emulator: FalBackend) -> Starlette:
    """The fal emulator's Starlette app (its lifespan closes the emulator on shutdown)."""

    def unauthorized(request: Request) -> Response | None:
        return check_key(emulator, request)

    def find(request: Request) -> FalRequest | None:
        params = request.path_params
        found = emulator.requests.get(params["request_id"])
        if found is None or found.app_id != f"{params['owner']}/{params['app']}":
            return None
        return found

    async def submit(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        model_id = request.path_params["model_id"].strip("/")
        parts = model_id.split("/")
        if "requests" in parts[2:]:
            return JSONResponse({"detail": "Method Not Allowed"}, status_code=405)
        plan = await read_input(emulator, request, model_id)
        if isinstance(plan, Response):
            return plan
        base = base_url(request)
        queued = emulator.submit(
            model_id=model_id,
            app_id="/".join(parts[:2]),
            plan=plan,
            webhook_url=request.query_params.get("fal_webhook") or None,
            base_url=base,
        )
        position = emulator.queue_position(queued)
        if queued.config.webhook_before_response:
            await queued.first_attempt_done.wait()
        body = {
            "status": RequestStatus.IN_QUEUE.value,
            "request_id": queued.request_id,
            "gateway_request_id": queued.gateway_request_id,
            **queue_urls(base, queued),
            "queue_position": position,
        }
        return JSONResponse(body)

    async def status(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        if (found := find(request)) is None:
            return JSONResponse(NOT_FOUND, status_code=404)
        with_logs = request.query_params.get("logs", "").lower() in {"1", "true"}
        body: dict[str, Any] = {"status": found.status.value, "request_id": found.request_id}
        body.update(queue_urls(base_url(request), found))
        body["logs"] = list(found.logs) if with_logs else None
        if found.status is RequestStatus.IN_QUEUE:
            body["queue_position"] = emulator.queue_position(found)
        if found.status is not RequestStatus.COMPLETED:
            return JSONResponse(body, status_code=202)
        metrics = {} if found.inference_time_s is None else {"inference_time": found.inference_time_s}
        body["metrics"] = metrics
        if found.failure is not None:
            body["error"] = found.failure.error
            body["error_type"] = found.failure.error_type
        return JSONResponse(body)

    async def result(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        if (found := find(request)) is None or found.result_expired(emulator.clock()):
            return JSONResponse(NOT_FOUND, status_code=404)
        if found.status is not RequestStatus.COMPLETED:
            return JSONResponse({"detail": "Request is still in progress"}, status_code=400)
        return result_response(found)

    async def cancel(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        if (found := find(request)) is None:
            return JSONResponse(NOT_FOUND, status_code=404)
        if not emulator.cancel(found):
            return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)

    async def jwks(request: Request) -> Response:
        if emulator.config.jwks_down:
            return JSONResponse({"detail": "Service Unavailable"}, status_code=503)
        return JSONResponse(emulator.jwks())

    async def cdn_file(request: Request) -> Response:
        return serve_file(emulator, request.path_params["name"])

    async def rotate_key(request: Request) -> Response:
        emulator.rotate_key()
        return JSONResponse(emulator.jwks())

    async def list_requests(request: Request) -> Response:
        summary = [
            {"request_id": r.request_id, "model_id": r.model_id, "status": r.status.value}
            for r in emulator.requests.values()
        ]
        return JSONResponse({"requests": summary})

    async def show_request(request: Request) -> Response:
        found = emulator.requests.get(request.path_params["request_id"])
        if found is None:
            return JSONResponse(NOT_FOUND, status_code=404)
        return JSONResponse(found.to_dict())

    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's partial matches (a GET on a submit path, e.g. status under owner/app/path) end here.
        if not isinstance(exc, HTTPException):
            return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    queue = "/{owner}/{app}/requests/{request_id}"
    routes = [
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        Route("/cdn/files/{name}", cdn_file, methods=["GET"]),
        *config_routes(emulator),
        Route("/_emulator/rotate-key", rotate_key, methods=["POST"]),
        Route("/_emulator/requests", list_requests, methods=["GET"]),
        Route("/_emulator/requests/{request_id}", show_request, methods=["GET"]),
        Route(queue + "/status", status, methods=["GET"]),
        Route(queue + "/cancel", cancel, methods=["PUT"]),
        Route(queue, result, methods=["GET"]),
        Route("/{model_id:path}", submit, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error},
        lifespan=lambda app: emulator.running(),
    )
