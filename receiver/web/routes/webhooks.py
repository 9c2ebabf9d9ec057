"""`/webhooks/{provider}/{job_id}`: read the raw body, verify, record in one transaction, answer."""

from __future__ import annotations

import hashlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from receiver.errors import NotFoundError
from receiver.ingest.bodies import UnusableSignedBody, WebhookGate, is_large, off_loop, read_within
from receiver.ingest.signatures import check_job_token
from receiver.models import JobStatus, Outcome, ProviderEvent
from receiver.providers.base import Provider, VerifiedWebhook, safe_headers
from receiver.web.http import JSONResponse, read_body
from receiver.wiring import Services


async def receive_webhook(request: Request) -> JSONResponse:
    svc: Services = request.app.state.services
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
        return JSONResponse({"status": "ignored"})
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
    return JSONResponse({"status": result.value})


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


routes = [Route("/webhooks/{provider}/{job_id}", receive_webhook, methods=["POST"])]
