"""`/webhooks/{provider}/{job_id}`: read the raw body, verify, record in one transaction, answer."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from urllib.parse import parse_qsl

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.errors import NotFoundError, ReceiverError
from receiver.ingest.bodies import UnusableSignedBody, WebhookGate, is_large, off_loop, read_within
from receiver.ingest.signatures import check_job_token
from receiver.jobs.transitions import Ingest
from receiver.models import JobStatus, Outcome, ProviderEvent
from receiver.observability import logs, metrics
from receiver.providers.base import Provider, VerifiedWebhook, safe_headers
from receiver.support import jsontext
from receiver.web.http import JSON_MEDIA_TYPE, error_response, receive_body, receiver_error_response
from receiver.web.operations import TEXT, Operation, Param, Reply
from receiver.web.schemas import FalWebhook, WaveSpeedWebhook, WebhookAnswer
from receiver.wiring import Services

log = logging.getLogger(__name__)
PREFIX = "/webhooks/"


async def receive_webhook(request: Request) -> Response:
    """The route in the table (and in `/openapi.json`); `WebhookEdge` answers the same requests before routing."""
    params = request.path_params
    token = request.query_params.get("token")
    return await answer_webhook(
        request.app, params["provider"], params["job_id"], token, request.headers, request.receive
    )


async def answer_webhook(
    app: Starlette, provider_name: str, job_id: str, token: str | None, headers: Mapping[str, str], receive: Receive
) -> Response:
    """Check the URL's token, read the body, verify and record it; raises `ReceiverError` for a refusal."""
    svc: Services = app.state.services
    provider = svc.providers.get(provider_name)
    if provider is None or not provider.webhooks:
        raise NotFoundError(f"no webhook endpoint for provider {provider_name!r}")
    logs.bind(provider=provider.name, job_id=job_id)
    check_job_token(svc.secret, provider.name, job_id, token)
    declared = headers.get("content-length")
    if is_large(declared):
        # Waits for a slot before the body is read; the slot is held until the event is recorded.
        async with webhook_gate(app).slot():
            body = await read_within(receive_body(receive, declared, svc.settings.max_body_bytes))
            return await record_webhook(svc, provider, job_id, headers, body)
    body = await receive_body(receive, declared, svc.settings.max_body_bytes)
    return await record_webhook(svc, provider, job_id, headers, body)


async def record_webhook(
    svc: Services, provider: Provider, job_id: str, headers: Mapping[str, str], body: bytes
) -> Response:
    """Verify and record one webhook; the answer says what recording it did."""
    started = time.perf_counter()
    try:
        verified = await provider.verify_webhook(headers, body, now=svc.clock())
    except UnusableSignedBody as exc:
        # Raised only once the signature verified: a genuine event we cannot act on. Refusing it would have
        # the provider resend it for days; record the exact bytes and fail the job instead.
        verified = await malformed_body(job_id, body, exc)
    if verified.outcome is None:
        metrics.webhook_answered(provider.name, "ignored", started)
        return answer("ignored")
    event = ProviderEvent(
        provider=provider.name,
        kind="webhook",
        dedup_key=verified.dedup_key,
        job_id=job_id,
        request_id=verified.request_id or None,
        outcome=verified.outcome,
        body=body,
        headers=safe_headers(headers),
    )
    status = await svc.jobs.ingest(event)
    metrics.webhook_answered(provider.name, status, started)
    return answer(status)


# The four answers, encoded once (as `JSONResponse(WebhookAnswer(...))` would encode them): the ingest path
# builds no model and encodes no JSON to say which one it is.
_ANSWERS = {
    status: jsontext.dumps(WebhookAnswer(status=status).model_dump())
    for status in (Ingest.APPLIED, Ingest.RECORDED, Ingest.DUPLICATE, "ignored")
}


def answer(status: str) -> Response:
    return Response(_ANSWERS[status], media_type=JSON_MEDIA_TYPE)


def webhook_gate(app: Starlette) -> WebhookGate:
    """The app's gate for large webhook bodies (made on first use: its semaphore belongs to the app's loop)."""
    gate: WebhookGate | None = getattr(app.state, "webhook_gate", None)
    if gate is None:
        gate = app.state.webhook_gate = WebhookGate()
    return gate


class WebhookEdge:
    """`POST /webhooks/{provider}/{job_id}` answered before Starlette routing: the route's own code
    (`answer_webhook`) without the router's scan of every route, `Request` and its query parsing, and the
    exception middleware (each webhook's share of the event loop; see docs/benchmarks.md). Everything else,
    and any request to a webhook path it does not take (another method, a mounted app), goes on to `app`.
    It sits after `RequestHygiene`, which checks `Host` and cross-site requests for every route; `BearerAuth`
    and `BodyGate` only ever act under `/v1`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        ours = path.startswith(PREFIX) and scope["type"] == "http" and scope["method"] == "POST"
        if not ours or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        provider, _, job_id = path[len(PREFIX) :].partition("/")
        if not provider or not job_id or "/" in job_id:
            await self.app(scope, receive, send)  # not the route's shape: the router answers (404)
            return
        try:
            response = await answer_webhook(
                scope["app"], provider, job_id, query_value(scope["query_string"], "token"),
                Headers(scope=scope), receive,
            )  # fmt: skip
        except ReceiverError as exc:
            metrics.webhook_refused(scope["app"].state.services.providers, provider, exc.code)
            response = receiver_error_response(exc)
        except Exception:
            metrics.webhook_refused(scope["app"].state.services.providers, provider, "internal_error")
            log.exception("unhandled error on POST %s", path)
            response = error_response(500, "internal_error", "internal error; see the server log")
        await response(scope, receive, send)


def query_value(query_string: bytes, name: str) -> str | None:
    """The last value of `name` in a query string, as Starlette's `request.query_params.get(name)` reads it."""
    found = None
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key == name:
            found = value
    return found


async def malformed_body(job_id: str, body: bytes, exc: UnusableSignedBody) -> VerifiedWebhook:
    """A failed outcome for a signed body holding a value JSON cannot carry, bound to the request its signature
    names (so a body signed for another request is refused as any would be); a resend of the same bytes is a
    duplicate (the key is the body's hash: the body's own fields could not be read strictly)."""
    error = {
        "code": "malformed_provider_body",
        "message": f"the provider's signed webhook body is unusable ({exc.cause.message}); its raw bytes are in "
        "the job's events",
    }
    outcome = Outcome(JobStatus.FAILED, error=error)
    digest = await off_loop(body, hashlib.sha256, body)
    key = f"malformed:{job_id}:{digest.hexdigest()}"
    return VerifiedWebhook(dedup_key=key, request_id=exc.request_id, outcome=outcome)


ROUTE = "/webhooks/{provider}/{job_id}"
UNIX_SECONDS = {"type": "string", "pattern": "^[0-9]{1,18}$"}


def webhook_operation(provider: str, headers: tuple[Param, ...], body: type[BaseModel], note: str = "") -> Operation:
    """A provider's completion webhook: the per-job token in the URL, signed headers over the raw body."""
    return Operation(
        "POST",
        f"/webhooks/{provider}/{{job_id}}",
        receive_webhook,
        served_at=ROUTE,
        summary=f"{provider} completions",
        tag="webhooks",
        ok=Reply(200, "Recorded (`applied`, `recorded`), a `duplicate`, or not final (`ignored`).", WebhookAnswer),
        errors=(400, 401, 403, 404, 413, 503),
        params=(
            Param("path", "job_id", TEXT, "Our job id, from the webhook URL we gave the provider."),
            Param("query", "token", TEXT, "The per-job token from that URL.", required=True),
            *headers,
        ),
        body=body,
        public=True,
        description=f"Verified over the raw bytes before anything is recorded; 2xx only after the commit.{note}",
    )


operations = [
    webhook_operation(
        "fal",
        (
            Param("header", "X-Fal-Webhook-Request-Id", TEXT, "fal's request id (also in the body).", required=True),
            Param("header", "X-Fal-Webhook-User-Id", TEXT, "The fal user the request ran for.", required=True),
            Param(
                "header",
                "X-Fal-Webhook-Timestamp",
                UNIX_SECONDS,
                "Unix seconds, within `RECEIVER_WEBHOOK_TOLERANCE_S`.",
                required=True,
            ),
            Param(
                "header",
                "X-Fal-Webhook-Signature",
                {"type": "string", "pattern": "^[0-9a-fA-F]{128}$"},
                "Hex Ed25519 signature by a key of fal's JWKS.",
                required=True,
            ),
        ),
        FalWebhook,
    ),
    webhook_operation(
        "wavespeed",
        (
            Param("header", "webhook-id", TEXT, "WaveSpeed's delivery id.", required=True),
            Param(
                "header",
                "webhook-timestamp",
                UNIX_SECONDS,
                "Unix seconds, within `RECEIVER_WEBHOOK_TOLERANCE_S`.",
                required=True,
            ),
            Param(
                "header",
                "webhook-signature",
                {"type": "string", "pattern": "^v3,[0-9a-fA-F]{64}$"},
                "`v3,<hex HMAC-SHA256>` of `id.timestamp.body` under the `whsec_` secret.",
                required=True,
            ),
        ),
        WaveSpeedWebhook,
        " 404 while `RECEIVER_WAVESPEED_WEBHOOKS` is off.",
    ),
]
