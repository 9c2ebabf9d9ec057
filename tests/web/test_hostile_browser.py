"""A web page the operator visits against a token-less loopback instance: DNS rebinding, cross-site requests."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import socket
import struct
import time
from typing import Any

import httpx
import pytest
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from receiver.app import create_app
from receiver.ingest.signatures import sign_fal
from receiver.web.asgi_server import bind_socket, running_server
from receiver.web.hygiene import ALLOWED_CACHE_SIZE, RequestHygiene
from tests.helpers.database import count_rows
from tests.helpers.http import RawConnection
from tests.helpers.stack import Stack, StackFactory

JSON = {"Content-Type": "application/json; charset=utf-8"}
SUBSCRIPTION = json.dumps({"kind": "webhook", "url": "https://attacker.example/collect"}).encode()


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack(workers=False, allowed_hosts="receiver.internal, Proxy.Example.")


def port(stack: Stack) -> int:
    return int(stack.url.rsplit(":", 1)[1])


async def subscriptions(stack: Stack) -> int:
    return await count_rows(stack.services.db.path, "subscriptions")


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


API_READS = ["/v1/jobs", "/v1/callback-secret", "/v1/stream?limit_s=0.1", "/v1/subscriptions"]


@pytest.mark.parametrize("headers", list(CROSS_SITE.values()), ids=list(CROSS_SITE))
async def test_a_cross_site_read_of_the_api_is_refused(make_stack: StackFactory, headers: dict[str, str]) -> None:
    """A GET to any `/v1` route that a browser says another site sent gets 403 `cross_site_request`: a page can
    neither read the API nor hold one of RECEIVER_STREAM_MAX_CLIENTS stream slots (the one slot stays free)."""
    stack = await make_stack(workers=False, stream_max_clients=1, stream_ping_s=0.05)
    sent = {name: value.format(port=port(stack)) for name, value in headers.items()}
    for path in API_READS:
        assert_refused(await stack.client.get(path, headers=sent), 403, "cross_site_request")
    assert stack.services.hub.open_streams == 0
    assert (await stack.client.get("/v1/stream", params={"limit_s": "0.05"})).status_code == 200


async def test_images_health_and_openapi_are_served_cross_site(stack: Stack) -> None:
    """Stored images (a capability URL chat services and browsers fetch by design), /healthz and
    /openapi.json answer a cross-site GET as any other; so does a same-origin read of the API."""
    cross = {"Origin": "https://chat.example", "Sec-Fetch-Site": "cross-site"}
    image = await stack.client.get("/v1/images/" + "0" * 64, headers=cross)
    assert image.status_code == 404, image.text  # an unknown image: not refused, just not there
    for path in ("/healthz", "/openapi.json"):
        assert (await stack.client.get(path, headers=cross)).status_code == 200, path
    same = {"Origin": f"http://127.0.0.1:{port(stack)}", "Sec-Fetch-Site": "same-origin"}
    response = await stack.client.get("/v1/jobs", headers=same)
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


async def raw_request(stack: Stack, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte (headers an HTTP client would merge or refuse); its answer."""
    connection = await RawConnection.open(stack)
    await connection.send(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    answer = await connection.response()
    await connection.close()
    assert answer is not None, "the server closed the connection without an answer"
    return answer


async def test_a_host_header_sent_twice_is_refused(stack: Stack) -> None:
    """Two `Host` headers (a rebound name, then ours, or the reverse) get 400 `bad_host` (RFC 9112: a request
    with more than one Host is invalid), whichever one the app would have read."""
    for first, second in (("attacker.example", "127.0.0.1"), ("127.0.0.1", "attacker.example")):
        status, _, body = await raw_request(stack, f"GET /v1/callback-secret HTTP/1.1\nHost: {first}\nHost: {second}\n")
        assert status == 400 and json.loads(body)["error"]["code"] == "bad_host", body
        assert "more than once" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize("name", ["Origin", "Sec-Fetch-Site"])
async def test_an_origin_sent_twice_is_cross_site(stack: Stack, name: str) -> None:
    """Two `Origin` (or `Sec-Fetch-Site`) headers, a foreign one and then ours, are refused 403 whatever their
    order: no guessing which one the browser meant."""
    ours = f"http://127.0.0.1:{port(stack)}" if name == "Origin" else "same-origin"
    foreign = "https://attacker.example" if name == "Origin" else "cross-site"
    for first, second in ((foreign, ours), (ours, foreign)):
        head = (
            f"POST /v1/subscriptions HTTP/1.1\nHost: 127.0.0.1:{port(stack)}\nContent-Type: application/json\n"
            f"{name}: {first}\n{name}: {second}\nContent-Length: {len(SUBSCRIPTION)}\n"
        )
        status, _, body = await raw_request(stack, head, SUBSCRIPTION)
        assert status == 403 and json.loads(body)["error"]["code"] == "cross_site_request", body
    assert await subscriptions(stack) == 0


def local_ipv4() -> str | None:
    """A non-loopback IPv4 address of this machine (SIOCGIFADDR on each interface), or None."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))[20:24]
            except OSError:
                continue  # no IPv4 address on this interface
        address = socket.inet_ntoa(packed)
        if not ipaddress.ip_address(address).is_loopback:
            return address
    return None


def dual_stack_socket() -> socket.socket | None:
    """What `receiver serve --host ::` listens on, when this machine has IPv6 and binds `::` dual-stack."""
    try:
        sock = bind_socket("::", 0)
    except OSError:
        return None
    if sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
        sock.close()
        return None
    return sock


async def test_an_ipv4_client_of_a_dual_stack_bind_may_name_the_address(make_stack: StackFactory) -> None:
    """Bound to `::` (IPv6 and IPv4 on one socket), an IPv4 client that names the machine's address it
    connected to in `Host` is served, though the socket reports that address as `::ffff:a.b.c.d`; another
    address is still 400 `bad_host`. (Through a real socket when this machine has IPv6 and a non-loopback
    IPv4 address; else through the ASGI scope uvicorn would hand over.)"""
    stack = await make_stack(workers=False)
    address, sock = local_ipv4(), dual_stack_socket()
    if address is not None and sock is not None:
        async with running_server(create_app(stack.services), sock=sock):
            origin = f"http://{address}:{sock.getsockname()[1]}"
            async with httpx.AsyncClient(base_url=origin, timeout=10) as client:
                served = await client.get("/v1/callback-secret")
                foreign = await client.get("/v1/callback-secret", headers={"Host": "198.51.100.7"})
                mapped = await client.get("/v1/callback-secret", headers={"Host": f"[::ffff:{address}]"})
        assert served.status_code == 200, served.text
        assert mapped.status_code == 200, mapped.text
        assert_refused(foreign, 400, "bad_host")
        return
    if sock is not None:
        sock.close()
    statuses = [await asgi_status(host) for host in ("192.0.2.2", "198.51.100.7", "[::ffff:192.0.2.2]")]
    assert statuses == [200, 400, 200]


async def asgi_status(host: str) -> int:
    """The status RequestHygiene gives a GET naming `host`, on a connection uvicorn reports as reaching
    `::ffff:192.0.2.2` (an IPv4 client of a dual-stack socket)."""

    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await Response(status_code=200)(scope, receive, send)

    scope = {"type": "http", "method": "GET", "path": "/v1/jobs", "server": ("::ffff:192.0.2.2", 8000)}
    scope["headers"] = [(b"host", host.encode())]
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await RequestHygiene(ok, public_url="http://127.0.0.1:8000")(scope, receive, send)
    return int(sent[0]["status"])


async def test_a_remembered_host_is_still_checked_against_the_address_reached() -> None:
    """An allowed `Host` value is remembered with the address the connection reached: the same value is
    still refused on a connection to another address, and more distinct values than are remembered are
    each still checked."""
    hygiene = RequestHygiene(_ok, public_url="http://127.0.0.1:8000")
    assert await _status(hygiene, "192.0.2.2:8000", server="192.0.2.2") == 200
    assert await _status(hygiene, "192.0.2.2:8000", server="192.0.2.2") == 200  # now from memory
    assert await _status(hygiene, "192.0.2.2:8000", server="192.0.2.3") == 400
    for port in range(ALLOWED_CACHE_SIZE + 10):
        assert await _status(hygiene, f"localhost:{port}", server="192.0.2.2") == 200
    assert await _status(hygiene, "192.0.2.2:8000", server="192.0.2.3") == 400
    assert await _status(hygiene, "rebound.example:8000", server="192.0.2.2") == 400


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(status_code=200)(scope, receive, send)


async def _status(hygiene: RequestHygiene, host: str, *, server: str) -> int:
    scope = {"type": "http", "method": "POST", "path": "/webhooks/fal/x", "server": (server, 8000)}
    scope["headers"] = [(b"host", host.encode())]
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await hygiene(scope, receive, send)
    return int(sent[0]["status"])
