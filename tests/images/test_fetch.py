"""Guarded fetches over real loopback HTTP(S): SSRF refusals, pinning, TLS by name, redirects, caps and errors."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gzip
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from receiver.errors import GiveUpError, RetryLaterError
from receiver.images.download import Fetched, FetchPolicy, fetch_image_bytes, fetch_url
from receiver.support.netguard import BlockedTarget, PinnedPools, Resolver
from receiver.web.asgi_server import bind_socket, running_server
from tests.helpers.images import png_bytes

LOCAL = FetchPolicy(allow_private=True, timeout_s=5.0, connect_timeout_s=5.0)
pytestmark = pytest.mark.asyncio(loop_scope="module")


PNG = png_bytes(8, 6)


@dataclass
class Origin:
    """A tiny image host on loopback that records what it was asked."""

    paths: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    peers: list[int] = field(default_factory=list)  # the client's port of each request's connection
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # /hang waits for it

    def app(self) -> Starlette:
        async def record(request: Request) -> None:
            self.paths.append(request.url.path)
            self.hosts.append(request.headers.get("host", ""))
            self.peers.append(request.client.port if request.client else 0)

        async def image(request: Request) -> Response:
            await record(request)
            return Response(PNG, media_type="image/png")

        async def big(request: Request) -> Response:
            await record(request)
            return Response(b"x" * 2000, media_type="image/png")

        async def chunked(request: Request) -> StreamingResponse:
            await record(request)

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b"y" * 200

            return StreamingResponse(chunks(), media_type="image/png")

        async def gzipped(request: Request) -> Response:
            """2000 bytes once decoded, far fewer on the wire, sent compressed although we asked for identity."""
            await record(request)
            body = gzip.compress(b"z" * 2000)
            return Response(body, media_type="image/png", headers={"Content-Encoding": "gzip"})

        async def status(request: Request) -> Response:
            await record(request)
            code = int(request.path_params["code"])
            retry_after = request.query_params.get("retry_after")
            headers = {"Retry-After": retry_after} if retry_after else {}
            return Response(b"no", status_code=code, headers=headers)

        async def hop(request: Request) -> Response:
            """`/r/{n}` redirects n times before answering the image, in the `style` asked for."""
            await record(request)
            n = int(request.path_params["n"])
            if n == 0:
                return Response(PNG, media_type="image/png")
            style = request.query_params.get("style", "relative")
            query = f"?style={style}"
            location = {
                "relative": f"{n - 1}{query}",
                "absolute-path": f"/r/{n - 1}{query}",
                "absolute": str(request.url.replace(path=f"/r/{n - 1}")),
            }[style]
            return RedirectResponse(location, status_code=302)

        async def redirect_to(request: Request) -> Response:
            await record(request)
            return RedirectResponse(request.query_params["to"], status_code=int(request.query_params.get("code", 302)))

        async def hang(request: Request) -> Response:
            await record(request)
            await self.gate.wait()
            return Response(PNG, media_type="image/png")

        return Starlette(
            routes=[
                Route("/image", image),
                Route("/big", big),
                Route("/chunked", chunked),
                Route("/gzip", gzipped),
                Route("/status/{code}", status),
                Route("/r/{n}", hop),
                Route("/redirect", redirect_to),
                Route("/hang", hang),
            ]
        )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served() -> AsyncIterator[tuple[Origin, str]]:
    """One image host for the module (started once: the tests share its event loop)."""
    host = Origin()
    async with running_server(host.app()) as url:
        yield host, url


@pytest_asyncio.fixture(loop_scope="module")
async def origin(served: tuple[Origin, str]) -> AsyncIterator[tuple[Origin, str]]:
    """The shared host with a clean record for this test."""
    host, url = served
    host.paths.clear()
    host.hosts.clear()
    host.peers.clear()
    try:
        yield host, url
    finally:
        host.gate.set()  # lets a hung request finish
        host.gate = asyncio.Event()


@pytest_asyncio.fixture(loop_scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http


class Resolutions:
    """A fake DNS: name -> addresses; records each lookup."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


@contextlib.asynccontextmanager
async def no_network() -> AsyncIterator[tuple[httpx.AsyncClient, list[httpx.Request]]]:
    """A client whose every request is recorded and answered locally instead of sent."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=PNG)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        yield http, sent


async def never_resolve(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} should not have been resolved")


# --- SSRF: refused in pin, before any connection ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/x",
        "https://10.0.0.1/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://0.0.0.0/x",
        "https://224.0.0.1/x",
        "https://[::7f00:1]/x",
        "https://[64:ff9b::a00:1]/x",
        "https://[fec0::1]/x",
        "https://[fe80::1%25eth0]/x",
        "https://192.0.0.8/x",
    ],
    ids=[
        "loopback",
        "private-10",
        "cloud-metadata",
        "ipv6-loopback",
        "mapped-loopback",
        "mapped-private",
        "unspecified",
        "multicast",
        "ipv4-compatible",
        "nat64-private",
        "site-local",
        "link-local-zone",
        "ietf-assignment",
    ],
)
async def test_non_global_literal_addresses_are_refused_without_connecting(url: str) -> None:
    """An https URL whose host is a non-global IP literal is refused with blocked_target; nothing is sent."""
    async with no_network() as (http, sent):
        with pytest.raises(BlockedTarget) as caught:
            await fetch_url(http, url, FetchPolicy(), resolver=never_resolve)
    assert caught.value.code == "blocked_target"
    assert sent == []


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://93.184.216.34/x", "http scheme"),
        ("https://user:hunter2@example.com/x", "credentials"),
        ("ftp://example.com/x", "ftp scheme"),
        ("file:///etc/passwd", "file scheme"),
        ("https:///x", "no host"),
        ("https://example.com:99999/x", "not a valid URL"),
        ("https://a..b/x", "not a valid host name"),
    ],
    ids=["http-public-literal", "credentials", "ftp", "file", "no-host", "bad-port", "bad-name"],
)
async def test_unusable_urls_are_refused_in_pin(url: str, words: str) -> None:
    """Plain http (without allow_private), credentials, other schemes and malformed URLs are blocked, unsent."""
    async with no_network() as (http, sent):
        with pytest.raises(BlockedTarget) as caught:
            await fetch_url(http, url, FetchPolicy(), resolver=never_resolve)
    assert words in caught.value.message
    assert "hunter2" not in caught.value.message
    assert sent == []


@pytest.mark.parametrize(
    ("url", "sent_url", "host_header"),
    [
        ("https://93.184.216.34/a.png?sig=1", "https://93.184.216.34/a.png?sig=1", "93.184.216.34"),
        ("https://[2606:4700::1111]:8443/a.png", "https://[2606:4700::1111]:8443/a.png", "[2606:4700::1111]:8443"),
    ],
    ids=["ipv4", "ipv6-with-port"],
)
async def test_public_literal_addresses_are_fetched_with_a_valid_host_header(
    url: str, sent_url: str, host_header: str
) -> None:
    """A public IP literal is contacted as is, with the query kept and IPv6 brackets in the Host header."""
    async with no_network() as (http, sent):
        fetched = await fetch_url(http, url, FetchPolicy(), resolver=never_resolve)
    assert fetched.data == PNG
    assert [str(request.url) for request in sent] == [sent_url]
    assert sent[0].headers["host"] == host_header


@pytest.mark.parametrize(
    "answer",
    [["10.1.2.3"], ["93.184.216.34", "10.1.2.3"], ["2606:4700::1111", "::1"], ["::ffff:192.168.0.1"]],
    ids=["private", "mixed-v4", "mixed-v6", "mapped-private"],
)
async def test_names_resolving_to_any_non_global_address_are_refused(answer: list[str]) -> None:
    """A DNS name is refused when any of its addresses is not global (no picking the public one)."""
    resolver = Resolutions({"images.example": answer})
    async with no_network() as (http, sent):
        with pytest.raises(BlockedTarget, match="non-public address"):
            await fetch_url(http, "https://images.example/a.png", FetchPolicy(), resolver=resolver)
    assert resolver.lookups == [("images.example", 443)]
    assert sent == []


@pytest.mark.parametrize(
    "resolver",
    [Resolutions({}), Resolutions({"images.example": []})],
    ids=["no-such-name", "empty-answer"],
)
async def test_dns_failure_is_transient(resolver: Resolver) -> None:
    """A name that does not resolve (or resolves to nothing) is worth retrying later: dns_failure."""
    async with no_network() as (http, sent):
        with pytest.raises(RetryLaterError) as caught:
            await fetch_url(http, "https://images.example/a.png", FetchPolicy(), resolver=resolver)
    assert caught.value.code == "dns_failure"
    assert sent == []


async def test_loopback_http_is_refused_without_allow_private(
    origin: tuple[Origin, str], client: httpx.AsyncClient
) -> None:
    """The loopback server is not contacted when allow_private is off."""
    host, url = origin
    with pytest.raises(BlockedTarget):
        await fetch_url(client, f"{url}/image", FetchPolicy())
    assert host.paths == []


async def test_host_allow_list_is_enforced_on_the_first_hop() -> None:
    """A host off the allow-list is refused before it is even resolved."""
    async with no_network() as (http, sent):
        with pytest.raises(BlockedTarget, match="allow-list"):
            await fetch_url(
                http, "https://evil.example/a.png", FetchPolicy(), allowed_hosts=["*.fal.media"], resolver=never_resolve
            )
    assert sent == []


@pytest.mark.parametrize(
    "location",
    ["https://169.254.169.254/latest/meta-data/", "http://cdn.example/a.png", "https://internal.example/a.png"],
    ids=["to-metadata", "https-to-http", "to-private-name"],
)
async def test_a_public_host_cannot_redirect_into_the_private_network(location: str) -> None:
    """Each redirect hop is checked like the first: a public host's redirect to a private target is refused."""
    resolver = Resolutions({"cdn.example": ["93.184.216.34"], "internal.example": ["10.0.0.7"]})
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(302, headers={"Location": location})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(BlockedTarget):
            await fetch_url(http, "https://cdn.example/a.png", FetchPolicy(), resolver=resolver)
    assert [str(request.url) for request in sent] == ["https://93.184.216.34/a.png"]  # pinned, and only once
    assert sent[0].headers["host"] == "cdn.example"
    assert sent[0].extensions["sni_hostname"] == "cdn.example"


@pytest.mark.parametrize(
    "target",
    ["http://elsewhere.test:{port}/image", "http://localhost:{port}/image"],
    ids=["other-name-same-server", "localhost"],
)
async def test_redirect_off_the_allow_list_is_refused(
    origin: tuple[Origin, str], client: httpx.AsyncClient, target: str
) -> None:
    """With allowed_hosts given, a redirect to a host off the list is refused even when allow_private is on."""
    host, url = origin
    port = int(url.rsplit(":", 1)[1])
    resolver = Resolutions({"elsewhere.test": ["127.0.0.1"], "localhost": ["127.0.0.1"]})
    to = target.format(port=port)
    with pytest.raises(BlockedTarget, match="allow-list"):
        await fetch_url(client, f"{url}/redirect?to={to}", LOCAL, allowed_hosts=["127.0.0.1"], resolver=resolver)
    assert host.paths == ["/redirect"]
    assert resolver.lookups == []


# --- pinning and TLS -------------------------------------------------------------------------------------


async def test_the_request_goes_to_the_resolved_address_with_the_original_host_header(
    origin: tuple[Origin, str], client: httpx.AsyncClient
) -> None:
    """A name is resolved once by the injected resolver; the server sees `Host: name:port`."""
    host, url = origin
    port = int(url.rsplit(":", 1)[1])
    resolver = Resolutions({"example.test": ["127.0.0.1"]})
    fetched = await fetch_url(client, f"http://example.test:{port}/image", LOCAL, resolver=resolver)
    assert fetched == Fetched(PNG, "image/png", f"http://example.test:{port}/image")
    assert host.hosts == [f"example.test:{port}"]
    assert resolver.lookups == [("example.test", port)]


@dataclass(frozen=True)
class Pki:
    """A private CA and a server certificate it signed."""

    ca_pem: bytes
    certfile: Path
    keyfile: Path


def make_pki(directory: Path, server_name: str) -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "receiver test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certfile, keyfile = directory / f"{server_name}.crt", directory / f"{server_name}.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Pki(ca_cert.public_bytes(serialization.Encoding.PEM), certfile, keyfile)


class ReadyServer(uvicorn.Server):
    """A uvicorn server that says, by an event, when it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextlib.asynccontextmanager
async def https_server(app: Starlette, pki: Pki) -> AsyncIterator[int]:
    """Serve `app` over TLS with `pki`'s server certificate on 127.0.0.1; yields the port."""
    sock = bind_socket("127.0.0.1", 0)
    config = uvicorn.Config(
        app, ssl_certfile=str(pki.certfile), ssl_keyfile=str(pki.keyfile), log_level="critical", lifespan="off"
    )
    server = ReadyServer(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    try:
        if serving.done():
            serving.result()
            raise RuntimeError("the TLS server stopped during start-up")
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await serving
        sock.close()


def trusting(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=pki.ca_pem.decode())


async def test_tls_is_verified_against_the_host_name_while_connecting_to_the_pinned_ip(tmp_path: Path) -> None:
    """https://localhost:port/ pinned to 127.0.0.1 succeeds: SNI and certificate checks use the name."""
    pki = make_pki(tmp_path, "localhost")
    host = Origin()
    resolver = Resolutions({"localhost": ["127.0.0.1"]})
    async with https_server(host.app(), pki) as port, httpx.AsyncClient(verify=trusting(pki)) as http:
        fetched = await fetch_url(http, f"https://localhost:{port}/image", LOCAL, resolver=resolver)
    assert fetched.data == PNG
    assert host.hosts == [f"localhost:{port}"]


def pools(verify: ssl.SSLContext | bool = True) -> PinnedPools:
    return PinnedPools(timeout=httpx.Timeout(5.0), limits=httpx.Limits(max_connections=4), verify=verify)


@pytest.mark.parametrize("keep_alive", [False, True], ids=["shared-client", "pinned-pools"])
@pytest.mark.parametrize("warm", [False, True], ids=["fresh-client", "after-a-verified-connection"])
async def test_a_certificate_for_another_name_fails_verification(tmp_path: Path, warm: bool, keep_alive: bool) -> None:
    """A name the certificate does not cover fails for good, even right after a verified fetch to the same IP:port
    (with keep-alive pools too: the verified connection is never lent to the other name)."""
    pki = make_pki(tmp_path, "localhost")
    host = Origin()
    resolver = Resolutions({"localhost": ["127.0.0.1"], "images.test": ["127.0.0.1"]})
    client = pools(trusting(pki)) if keep_alive else httpx.AsyncClient(verify=trusting(pki))
    async with https_server(host.app(), pki) as port, contextlib.aclosing(client) as http:
        if warm:
            await fetch_url(http, f"https://localhost:{port}/image", LOCAL, resolver=resolver)
        with pytest.raises(GiveUpError) as caught:
            await fetch_url(http, f"https://images.test:{port}/image", LOCAL, resolver=resolver)
    assert caught.value.code == "tls_verification_failed"
    assert host.hosts == ([f"localhost:{port}"] if warm else [])


async def test_pinned_pools_keep_a_connection_alive_per_host_name(origin: tuple[Origin, str]) -> None:
    """Fetches to one name reuse one connection; another name on the same address gets a connection of its own."""
    host, url = origin
    port = int(url.rsplit(":", 1)[1].strip("/"))
    resolver = Resolutions({"images.test": ["127.0.0.1"], "cdn.test": ["127.0.0.1"]})
    async with contextlib.aclosing(pools()) as http:
        for name in ("images.test", "images.test", "images.test", "cdn.test", "images.test"):
            fetched = await fetch_url(http, f"http://{name}:{port}/image", LOCAL, resolver=resolver)
            assert fetched.data == PNG
    assert host.hosts == [f"{name}:{port}" for name in ("images.test",) * 3 + ("cdn.test", "images.test")]
    first, cdn = host.peers[0], host.peers[3]
    assert host.peers == [first, first, first, cdn, first]
    assert cdn != first


async def test_pinned_pools_close_an_idle_pool_past_their_size(origin: tuple[Origin, str]) -> None:
    """With room for one target, a second name's pool closes the first's idle one: its next fetch reconnects."""
    host, url = origin
    port = int(url.rsplit(":", 1)[1].strip("/"))
    resolver = Resolutions({"images.test": ["127.0.0.1"], "cdn.test": ["127.0.0.1"]})
    limited = PinnedPools(timeout=httpx.Timeout(5.0), limits=httpx.Limits(max_connections=4), max_targets=1)
    async with contextlib.aclosing(limited) as http:
        for name in ("images.test", "cdn.test", "images.test"):
            await fetch_url(http, f"http://{name}:{port}/image", LOCAL, resolver=resolver)
    assert len(set(host.peers)) == 3


# --- redirects -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["relative", "absolute-path", "absolute"], ids=str)
async def test_redirects_are_followed_up_to_the_limit(
    origin: tuple[Origin, str], client: httpx.AsyncClient, style: str
) -> None:
    """Three redirects (relative, absolute-path or absolute Locations) are followed; the final URL is reported."""
    host, url = origin
    fetched = await fetch_url(client, f"{url}/r/3?style={style}", LOCAL)
    assert fetched.data == PNG
    assert fetched.final_url == f"{url}/r/0?style={style}"
    assert host.paths == ["/r/3", "/r/2", "/r/1", "/r/0"]


async def test_a_redirect_chain_longer_than_the_limit_is_refused(
    origin: tuple[Origin, str], client: httpx.AsyncClient
) -> None:
    """A fourth redirect gives up with too_many_redirects, and its target is never requested."""
    host, url = origin
    with pytest.raises(GiveUpError) as caught:
        await fetch_url(client, f"{url}/r/4", LOCAL)
    assert caught.value.code == "too_many_redirects"
    assert host.paths == ["/r/4", "/r/3", "/r/2", "/r/1"]


async def test_redirects_stay_allowed_within_the_allow_list(
    origin: tuple[Origin, str], client: httpx.AsyncClient
) -> None:
    """Redirects to hosts on the allow-list are followed."""
    _host, url = origin
    fetched = await fetch_url(client, f"{url}/r/2", LOCAL, allowed_hosts=["127.0.0.1"])
    assert fetched.data == PNG


async def test_a_redirect_without_location_gives_up(origin: tuple[Origin, str], client: httpx.AsyncClient) -> None:
    """A 302 without a Location header is an answer we cannot use: http_302."""
    _host, url = origin
    with pytest.raises(GiveUpError) as caught:
        await fetch_url(client, f"{url}/status/302", LOCAL)
    assert caught.value.code == "http_302"


# --- limits and errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/big", "/chunked", "/gzip"], ids=["content-length", "streamed", "gzip-decoded"])
async def test_bodies_over_max_bytes_are_refused(
    origin: tuple[Origin, str], client: httpx.AsyncClient, path: str
) -> None:
    """A body over max_bytes gives up with too_large: declared up front, counted while streaming, or decoded."""
    _host, url = origin
    with pytest.raises(GiveUpError) as caught:
        await fetch_url(client, f"{url}{path}", FetchPolicy(max_bytes=1000, allow_private=True))
    assert caught.value.code == "too_large"


@pytest.mark.parametrize("path", ["/big", "/chunked", "/gzip"], ids=["content-length", "streamed", "gzip-decoded"])
async def test_a_body_of_exactly_max_bytes_is_accepted(
    origin: tuple[Origin, str], client: httpx.AsyncClient, path: str
) -> None:
    """The cap is inclusive: 2000 bytes pass a 2000-byte limit."""
    _host, url = origin
    fetched = await fetch_url(client, f"{url}{path}", FetchPolicy(max_bytes=2000, allow_private=True))
    assert len(fetched.data) == 2000


@pytest.mark.parametrize(
    ("status", "code"),
    [(404, "not_found"), (410, "not_found"), (403, "http_403"), (400, "http_400")],
    ids=["404", "410", "403", "400"],
)
async def test_client_errors_give_up(
    origin: tuple[Origin, str], client: httpx.AsyncClient, status: int, code: str
) -> None:
    """4xx answers (other than 429) are permanent: not_found for 404/410, http_<status> otherwise."""
    _host, url = origin
    with pytest.raises(GiveUpError) as caught:
        await fetch_url(client, f"{url}/status/{status}", LOCAL)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(503, "7", 7.0), (429, "2.5", 2.5), (500, None, None), (502, "Wed, 21 Oct 2015 07:28:00 GMT", None)],
    ids=["503-retry-after", "429-retry-after", "500", "502-http-date"],
)
async def test_busy_or_broken_hosts_are_retried_later(
    origin: tuple[Origin, str], client: httpx.AsyncClient, status: int, retry_after: str | None, expected: float | None
) -> None:
    """429 and 5xx are transient; a delta-seconds Retry-After becomes retry_after_s."""
    _host, url = origin
    query = f"?retry_after={retry_after}" if retry_after else ""
    with pytest.raises(RetryLaterError) as caught:
        await fetch_url(client, f"{url}/status/{status}{query}", LOCAL)
    assert caught.value.code == f"http_{status}"
    assert caught.value.retry_after_s == expected


async def test_connection_refused_is_retried_later(client: httpx.AsyncClient) -> None:
    """Nobody listening on the port: a transient `unreachable`."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(RetryLaterError) as caught:
        await fetch_url(client, f"http://127.0.0.1:{port}/image", LOCAL)
    assert caught.value.code == "unreachable"


@pytest.mark.parametrize(
    "policy",
    [
        FetchPolicy(allow_private=True, timeout_s=0.2),
        FetchPolicy(allow_private=True, timeout_s=30.0, total_timeout_s=0.2),
    ],
    ids=["read-timeout", "total-deadline"],
)
async def test_a_host_that_does_not_answer_times_out(
    origin: tuple[Origin, str], client: httpx.AsyncClient, policy: FetchPolicy
) -> None:
    """A host that accepts the request but never answers is a transient `timeout` (per read, or in total)."""
    _host, url = origin
    with pytest.raises(RetryLaterError) as caught:
        await fetch_url(client, f"{url}/hang", policy)
    assert caught.value.code == "timeout"


# --- data URIs and the input-image wrapper ---------------------------------------------------------------


async def test_data_uris_are_decoded_without_the_network() -> None:
    """A base64 data URI is decoded locally, with its declared type."""
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    async with no_network() as (http, sent):
        fetched = await fetch_url(http, uri, FetchPolicy(), allowed_hosts=["*.fal.media"])
    assert (fetched.data, fetched.content_type) == (PNG, "image/png")
    assert sent == []


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("data:image/png;base64," + base64.b64encode(b"z" * 101).decode(), "too_large"),
        ("data:image/png,not-base64", "bad_data_uri"),
    ],
    ids=["too-large", "not-base64"],
)
async def test_bad_data_uris_give_up(uri: str, code: str) -> None:
    """max_bytes applies to data URIs too; a data URI that is not base64 is refused."""
    async with no_network() as (http, _sent):
        with pytest.raises(GiveUpError) as caught:
            await fetch_url(http, uri, FetchPolicy(max_bytes=100))
    assert caught.value.code == code


async def test_fetch_image_bytes_returns_the_body(origin: tuple[Origin, str], client: httpx.AsyncClient) -> None:
    """`fetch_image_bytes` is `fetch_url(...).data` for any public (here: allowed private) host."""
    _host, url = origin
    assert await fetch_image_bytes(client, f"{url}/r/1", LOCAL) == PNG


@pytest.mark.parametrize(
    ("path", "policy", "error", "code"),
    [
        ("/image", FetchPolicy(), GiveUpError, "bad_input_url"),
        ("/status/404", LOCAL, GiveUpError, "bad_input_url"),
        ("/big", FetchPolicy(max_bytes=1000, allow_private=True), GiveUpError, "input_too_large"),
        ("/status/503?retry_after=4", LOCAL, RetryLaterError, "input_unreachable"),
    ],
    ids=["private-host", "not-found", "too-large", "unavailable"],
)
async def test_fetch_image_bytes_keeps_the_input_image_codes(
    origin: tuple[Origin, str],
    client: httpx.AsyncClient,
    path: str,
    policy: FetchPolicy,
    error: type[Exception],
    code: str,
) -> None:
    """Input-image failures keep the codes providers report (bad_input_url, input_too_large, input_unreachable)."""
    _host, url = origin
    with pytest.raises(error) as caught:
        await fetch_image_bytes(client, f"{url}{path}", policy)
    assert getattr(caught.value, "code", None) == code
    if isinstance(caught.value, RetryLaterError):
        assert caught.value.retry_after_s == 4.0
