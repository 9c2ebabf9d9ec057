"""`/webhooks/{provider}/{job_id}`: read the raw body, verify, record in one transaction, answer."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from receiver.errors import NotFoundError
from receiver.http import read_body
from receiver.providers.base import ProviderEvent, safe_headers
from receiver.services import Services
from receiver.signatures import check_job_token


async def receive_webhook(request: Request) -> JSONResponse:
    svc: Services = request.app.state.services
    provider = svc.providers.get(request.path_params["provider"])
    if provider is None or not provider.webhooks:
        raise NotFoundError(f"no webhook endpoint for provider {request.path_params['provider']!r}")
    job_id = request.path_params["job_id"]
    check_job_token(svc.secret, provider.name, job_id, request.query_params.get("token"))
    body = await read_body(request, svc.settings.max_body_bytes)
    verified = await provider.verify_webhook(request.headers, body, now=svc.clock())
    if verified.outcome is None:
        return JSONResponse({"status": "ignored"})
    event = ProviderEvent(
        provider=provider.name,
        kind="webhook",
        dedup_key=verified.dedup_key,
        job_id=job_id,
        request_id=verified.request_id,
        outcome=verified.outcome,
        body=body,
        headers=safe_headers(request.headers),
    )
    result = await svc.jobs.ingest(event)
    return JSONResponse({"status": result.value})


routes = [Route("/webhooks/{provider}/{job_id}", receive_webhook, methods=["POST"])]
