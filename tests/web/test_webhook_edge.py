"""`WebhookEdge` answers webhooks before routing exactly as the route in the table does; other requests pass."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.routing import Route

from receiver.ingest.signatures import job_token
from receiver.web.asgi_server import running_server
from receiver.web.http import EXCEPTION_HANDLERS
from receiver.web.routes.webhooks import ROUTE, receive_webhook
from tests.helpers.provider_webhooks import signed_fal_webhook
from tests.helpers.stack import Stack, StackFactory

PAYLOAD = {"images": [], "seed": 7}
MAX_BODY = 4096


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack(workers=False, max_body_bytes=MAX_BODY)


@contextlib.asynccontextmanager
async def route_only(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The webhook route of the table alone, in a Starlette app with the stack's services and error handlers:
    what answers when `WebhookEdge` is not in front."""
    app = Starlette(routes=[Route(ROUTE, receive_webhook, methods=["POST"])], exception_handlers=EXCEPTION_HANDLERS)
    app.state.services = stack.services
    async with running_server(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


async def submitted(stack: Stack) -> dict[str, Any]:
    stack.emulator.config.no_delivery = True
    job = await stack.create_job()
    assert await stack.services.runner.run_once() == 1
    return await stack.job(job["id"])


def token(stack: Stack, job_id: str, provider: str = "fal") -> str:
    return job_token(stack.services.secret, provider, job_id)


Case = Callable[[Stack, dict[str, Any]], tuple[str, bytes, dict[str, str]]]


def _valid(stack: Stack, job: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD)
    return f"/webhooks/fal/{job['id']}?token={token(stack, job['id'])}", body, headers


def _bad_token(stack: Stack, job: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD)
    return f"/webhooks/fal/{job['id']}?token=nope", body, headers


def _token_twice_last_wrong(stack: Stack, job: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD)
    return f"/webhooks/fal/{job['id']}?token={token(stack, job['id'])}&token=nope", body, headers


def _token_twice_last_right(stack: Stack, job: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD)
    return f"/webhooks/fal/{job['id']}?token=nope&token={token(stack, job['id'])}", body, headers


def _unknown_provider(stack: Stack, job: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD)
    return f"/webhooks/nobody/{job['id']}?token={token(stack, job['id'], 'nobody')}", body, headers


def _forged(stack: Stack, job: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    body, headers = signed_fal_webhook(Ed25519PrivateKey.generate(), job["provider_request_id"], PAYLOAD)
    return f"/webhooks/fal/{job['id']}?token={token(stack, job['id'])}", body, headers


def _missing_header(stack: Stack, job: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    path, body, headers = _valid(stack, job)
    del headers["X-Fal-Webhook-Signature"]
    return path, body, headers


def _too_large(stack: Stack, job: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], {"pad": "x" * MAX_BODY})
    return f"/webhooks/fal/{job['id']}?token={token(stack, job['id'])}", body, headers


def _not_final(stack: Stack, job: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD, status="IN_PROGRESS")
    return f"/webhooks/fal/{job['id']}?token={token(stack, job['id'])}", body, headers


CASES = [
    pytest.param(_bad_token, 403, id="bad-token"),
    pytest.param(_token_twice_last_wrong, 403, id="token-twice-last-wrong"),
    pytest.param(_unknown_provider, 404, id="unknown-provider"),
    pytest.param(_forged, 401, id="forged"),
    pytest.param(_missing_header, 400, id="missing-header"),
    pytest.param(_too_large, 413, id="too-large"),
    pytest.param(_not_final, 200, id="not-final-ignored"),
]


@pytest.mark.parametrize(("case", "status"), CASES)
async def test_refusals_match_the_route(stack: Stack, case: Case, status: int) -> None:
    """A refused (or ignored) webhook gets the same status, headers and error body from the edge as from the
    route in the table, and neither records anything."""
    job = await submitted(stack)
    path, body, headers = case(stack, job)
    async with route_only(stack) as route:
        via_route = await route.post(path, content=body, headers=headers)
    via_edge = await stack.client.post(path, content=body, headers=headers)
    assert via_edge.status_code == via_route.status_code == status
    assert via_edge.json() == via_route.json()
    assert via_edge.headers["content-type"] == via_route.headers["content-type"] == "application/json"
    assert (await stack.job(job["id"]))["status"] == "submitted"


@pytest.mark.parametrize("first", ["edge", "route"])
async def test_applied_then_duplicate_either_way(stack: Stack, first: str) -> None:
    """The same signed webhook is applied by whichever path takes it first and is a duplicate on the other;
    the last `token` in the query is the one checked, as Starlette reads it."""
    job = await submitted(stack)
    path, body, headers = _token_twice_last_right(stack, job)
    async with route_only(stack) as route:
        clients = [stack.client, route] if first == "edge" else [route, stack.client]
        answers = [await client.post(path, content=body, headers=headers) for client in clients]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json() for a in answers] == [{"status": "applied"}, {"status": "duplicate"}]
    assert answers[0].headers["content-length"] == str(len(answers[0].content))
    assert (await stack.job(job["id"]))["status"] == "succeeded"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        pytest.param("GET", "/webhooks/fal/job1", 405, "method_not_allowed", id="get"),
        pytest.param("PUT", "/webhooks/fal/job1", 405, "method_not_allowed", id="put"),
        pytest.param("POST", "/webhooks/fal/job1/more", 404, "not_found", id="longer-path"),
        pytest.param("POST", "/webhooks/fal/", 404, "not_found", id="no-job-id"),
        pytest.param("POST", "/webhooks//job1", 404, "not_found", id="no-provider"),
    ],
)
async def test_other_requests_go_on_to_the_router(stack: Stack, method: str, path: str, status: int, code: str) -> None:
    """What is not a POST of the route's shape is answered by the router, in the one error shape."""
    response = await stack.client.request(method, path, content=b"{}")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
