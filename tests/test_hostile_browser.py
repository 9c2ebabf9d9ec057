"""A web page the operator visits against a token-less loopback instance: DNS rebinding and cross-site writes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from receiver.signatures import sign_fal
from tests.conftest import Stack, StackFactory

JSON = {"Content-Type": "application/json; charset=utf-8"}
SUBSCRIPTION = json.dumps({"kind": "webhook", "url": "https://attacker.example/collect"}).encode()


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack(workers=False, allowed_hosts="receiver.internal, Proxy.Example.")


def port(stack: Stack) -> int:
    return int(stack.url.rsplit(":", 1)[1])


async def subscriptions(stack: Stack) -> int:
    rows = await stack.services.db.fetch_all("SELECT COUNT(*) AS n FROM subscriptions")
    return int(rows[0]["n"])


def assert_refused(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": {"code": code, "message": response.json()["error"]["message"]}}


REBOUND = [
    "attacker.example",
    "attacker.example:{port}",
    "127.0.0.1.nip.io:{port}",
    "",
    "[::1",
    "a b",
    "evil.localhost.com",
    "127.0.0.1:99999",
]


@pytest.mark.parametrize("host", REBOUND, ids=[host or "empty" for host in REBOUND])
async def test_a_rebound_host_name_is_refused_before_routing(stack: Stack, host: str) -> None:
    """A `Host` that is none of ours (a rebound DNS name, or not a host at all) gets 400 `bad_host` on every
    route, so a page cannot read the callback secret or create a subscription through its own name."""
    headers = {"Host": host.format(port=port(stack))}
    for method, path in [("GET", "/v1/callback-secret"), ("GET", "/healthz"), ("POST", "/v1/subscriptions")]:
        response = await stack.client.request(
            method, path, headers={**headers, "Content-Type": "application/json"}, content=SUBSCRIPTION
        )
        assert_refused(response, 400, "bad_host")
    assert await subscriptions(stack) == 0


ALLOWED = ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST.", "[::1]:{port}", "app.localhost", "127.0.0.1"]
ALLOWED += ["receiver.internal:{port}", "proxy.example", "127.0.0.2"]


@pytest.mark.parametrize("host", ALLOWED, ids=ALLOWED)
async def test_our_own_names_are_served(stack: Stack, host: str) -> None:
    """Loopback names and literals, the listening address, RECEIVER_PUBLIC_URL's host and
    RECEIVER_ALLOWED_HOSTS names are served."""
    response = await stack.client.get("/v1/callback-secret", headers={"Host": host.format(port=port(stack))})
    assert response.status_code == 200, response.text


async def test_the_public_url_host_is_served_and_webhooks_from_providers_work(make_stack: StackFactory) -> None:
    """A provider's webhook reaches us under RECEIVER_PUBLIC_URL's host (no Origin, no Sec-Fetch-Site) and is
    applied; the same request under another name is refused."""
    public = await make_stack(workers=False, public_url="https://hooks.example.com")
    public.emulator.config.no_delivery = True
    job = await public.create_job()
    assert await public.services.runner.run_once() == 1
    request_id = (await public.job(job["id"]))["provider_request_id"]
    body = b'{"request_id":"%s","status":"OK","payload":{"images":[]}}' % request_id.encode()
    headers = sign_fal(
        public.signing_key, request_id=request_id, user_id="emulator-user", timestamp=int(time.time()), body=body
    )
    refused = await public.client.post(
        public.webhook_path(job["id"]), content=body, headers={**headers, "Host": "hooks.example.net"}
    )
    assert_refused(refused, 400, "bad_host")
    response = await public.client.post(
        public.webhook_path(job["id"]), content=body, headers={**headers, "Host": "hooks.example.com"}
    )
    assert response.status_code == 200 and response.json() == {"status": "applied"}, response.text


CROSS_SITE: dict[str, dict[str, str]] = {
    "origin-other-site": {"Origin": "https://attacker.example"},
    "origin-other-port": {"Origin": "http://127.0.0.1:1"},
    "origin-other-name": {"Origin": "http://localhost:{port}"},
    "origin-null": {"Origin": "null"},
    "fetch-cross-site": {"Sec-Fetch-Site": "cross-site"},
    "fetch-same-site": {"Sec-Fetch-Site": "same-site"},
    "both": {"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site"},
}


@pytest.mark.parametrize("headers", list(CROSS_SITE.values()), ids=list(CROSS_SITE))
async def test_a_cross_site_write_is_refused(stack: Stack, headers: dict[str, str]) -> None:
    """A POST/DELETE whose Origin is another origin, or whose Sec-Fetch-Site says cross-site or same-site,
    gets 403 `cross_site_request` and changes nothing, even with a JSON content type."""
    sent = {name: value.format(port=port(stack)) for name, value in headers.items()}
    sent["Content-Type"] = "application/json"
    response = await stack.client.post("/v1/subscriptions", content=SUBSCRIPTION, headers=sent)
    assert_refused(response, 403, "cross_site_request")
    deleted = await stack.client.delete("/v1/subscriptions/sub_x", headers=sent)
    assert_refused(deleted, 403, "cross_site_request")
    assert await subscriptions(stack) == 0


async def test_a_cross_site_text_plain_post_changes_nothing(stack: Stack) -> None:
    """The no-preflight form a page can send (`text/plain` JSON) is refused twice over: 403 with its Origin,
    415 without one."""
    for extra, status, code in [({"Origin": "https://attacker.example"}, 403, "cross_site_request"), ({}, 415, None)]:
        headers = {"Content-Type": "text/plain", **extra}
        response = await stack.client.post("/v1/subscriptions", content=SUBSCRIPTION, headers=headers)
        assert_refused(response, status, code or "unsupported_media_type")
    assert await subscriptions(stack) == 0


SAME_ORIGIN: dict[str, dict[str, str]] = {
    "no-browser-headers": {},
    "origin-same": {"Origin": "http://127.0.0.1:{port}"},
    "fetch-same-origin": {"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
    "fetch-none": {"Sec-Fetch-Site": "none"},
}


@pytest.mark.parametrize("headers", list(SAME_ORIGIN.values()), ids=list(SAME_ORIGIN))
async def test_same_origin_and_non_browser_writes_are_served(stack: Stack, headers: dict[str, str]) -> None:
    """A write from our own origin, or from a non-browser client (no Origin, no Sec-Fetch-Site), is served."""
    sent = {name: value.format(port=port(stack)) for name, value in headers.items()}
    response = await stack.client.post("/v1/subscriptions", content=SUBSCRIPTION, headers=sent | JSON)
    assert response.status_code == 201, response.text


async def test_a_cross_site_read_is_not_refused_but_not_shared(stack: Stack) -> None:
    """A cross-site GET is served (it changes nothing) without CORS headers, so the page cannot read it."""
    response = await stack.client.get("/v1/jobs", headers={"Origin": "https://attacker.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
