"""`/webhooks/{provider}/{job_id}`: read the raw body, verify, record in one transaction, answer."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request

from receiver.errors import NotFoundError
from receiver.ingest.bodies import UnusableSignedBody, WebhookGate, is_large, off_loop, read_within
from receiver.ingest.signatures import check_job_token
from receiver.models import JobStatus, Outcome, ProviderEvent
from receiver.providers.base import Provider, VerifiedWebhook, safe_headers
from receiver.web.http import JSONResponse, read_body
from receiver.web.operations import TEXT, Operation, Param, Reply
from receiver.web.routes.common import services
from receiver.web.schemas import FalWebhook, WaveSpeedWebhook, WebhookAnswer
from receiver.wiring import Services


async def receive_webhook(request: Request) -> JSONResponse:
    svc = services(request)
    provider = svc.providers.get(request.path_params["provider"])
    if provider is None or not provider.webhooks:
        raise NotFoundError(f"no webhook endpoint for provider {request.path_params['provider']!r}")
    job_id = request.path_params["job_id"]
    check_job_token(svc.secret, provider.name, job_id, request.query_params.get("token"))
    if is_large(request.headers.get("content-length")):
        # Waits for a slot before the body is read; the slot is held until the event is recorded.
        async with webhook_gate(request.app).slot():
            body = await read_within(read_body(request, svc.settings.max_body_bytes))
            return await record_webhook(request, svc, provider, job_id, body)
    body = await read_body(request, svc.settings.max_body_bytes)
    return await record_webhook(request, svc, provider, job_id, body)


async def record_webhook(request: Request, svc: Services, provider: Provider, job_id: str, body: bytes) -> JSONResponse:
    """Verify and record one webhook; the answer says what recording it did."""
    try:
        verified = await provider.verify_webhook(request.headers, body, now=svc.clock())
    except UnusableSignedBody as exc:
        # Raised only once the signature verified: a genuine event we cannot act on. Refusing it would have
        # the provider resend it for days; record the exact bytes and fail the job instead.
        verified = await malformed_body(job_id, body, exc)
    if verified.outcome is None:
        return JSONResponse(WebhookAnswer(status="ignored"))
    event = ProviderEvent(
        provider=provider.name,
        kind="webhook",
        dedup_key=verified.dedup_key,
        job_id=job_id,
        request_id=verified.request_id or None,
        outcome=verified.outcome,
        body=body,
        headers=safe_headers(request.headers),
    )
    result = await svc.jobs.ingest(event)
    return JSONResponse(WebhookAnswer(status=result))


def webhook_gate(app: Starlette) -> WebhookGate:
    """The app's gate for large webhook bodies (made on first use: its semaphore belongs to the app's loop)."""
    gate: WebhookGate | None = getattr(app.state, "webhook_gate", None)
    if gate is None:
        gate = app.state.webhook_gate = WebhookGate()
    return gate


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
