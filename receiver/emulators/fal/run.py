"""The fal emulator's synchronous endpoint, what `https://fal.run` serves (docs/providers.md#fal-hosts-and-auth).

`POST /{owner}/{app}[/{path}]` with the model input runs the model and answers with its output, unwrapped,
as the queue's result route would (the model's own status code and body on failure; `X-Fal-Request-Id`).
The fal SDK's `run()` posts here. It is a separate app because fal serves it on its own host: the queue
host answers the same path with a queue submit.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.emulators.base import base_url
from receiver.emulators.fal.requests import RequestStatus
from receiver.emulators.fal.routes import FalBackend, check_key, read_input, result_response, serve_file

RUNNER_GONE = {"detail": "Runner disconnected", "error_type": "runner_disconnected"}


def build_run_app(emulator: FalBackend) -> Starlette:
    """The fal.run stand-in; its requests share the emulator's queue, models, CDN and faults."""

    async def run(request: Request) -> Response:
        if (denied := check_key(emulator, request)) is not None:
            return denied
        model_id = request.path_params["model_id"].strip("/")
        if model_id.endswith("/stream"):  # the SDK's stream(): the emulated edit models answer once, never stream
            detail = f"{model_id.removesuffix('/stream')} has no streaming endpoint; call it without /stream"
            return JSONResponse({"detail": detail}, status_code=404)
        plan = await read_input(emulator, request, model_id)
        if isinstance(plan, Response):
            return plan
        found = emulator.submit(
            model_id=model_id,
            app_id="/".join(model_id.split("/")[:2]),
            plan=plan,
            webhook_url=None,
            base_url=base_url(request),  # output URLs point at this app's own CDN route
        )
        # Set once the request completed, or at shutdown.
        await found.finished.wait()
        if found.status is not RequestStatus.COMPLETED:
            return JSONResponse(RUNNER_GONE, status_code=503, headers={"X-Fal-Error-Type": "runner_disconnected"})
        return result_response(found)

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):
            return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        detail = exc.detail
        if exc.status_code in (404, 405):
            detail = f"{detail}: fal.run takes POST /{{owner}}/{{app}}[/{{path}}] with the model input"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    async def cdn_file(request: Request) -> Response:
        return serve_file(emulator, request.path_params["name"])

    routes = [
        Route("/cdn/files/{name}", cdn_file, methods=["GET"]),
        Route("/{model_id:path}", run, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
