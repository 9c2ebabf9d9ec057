"""The JWKS cache: bounded age, stale keys when the host is down, rate-limited single-flight refetches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from receiver.errors import VerificationUnavailable
from receiver.ingest.jwks import MAX_AGE_S, JwksCache
from receiver.ingest.signatures import public_jwk
from tests.helpers.clock import Clock

JWKS_URL = "https://jwks.test/.well-known/jwks.json"
KEY_A = Ed25519PrivateKey.from_private_bytes(b"\x0a" * 32)
KEY_B = Ed25519PrivateKey.from_private_bytes(b"\x0b" * 32)


def raw(keys: list[Ed25519PublicKey]) -> list[bytes]:
    return [key.public_bytes(Encoding.Raw, PublicFormat.Raw) for key in keys]


def raw_of(*signers: Ed25519PrivateKey) -> list[bytes]:
    return raw([signer.public_key() for signer in signers])


class JwksHost:
    """A stand-in JWKS server behind `httpx.MockTransport`: serves a document, or fails as told."""

    def __init__(self) -> None:
        self.document: Any = {"keys": [public_jwk(KEY_A)]}
        self.failure: str | None = None  # "connect", "timeout", "500", "not_json"
        self.requests = 0
        self.gate: asyncio.Event | None = None  # when set, requests wait for it (to hold a fetch in flight)
        self.in_flight = asyncio.Event()

    def serve(self, *signers: Ed25519PrivateKey) -> None:
        self.document = {"keys": [public_jwk(signer) for signer in signers]}

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        assert str(request.url) == JWKS_URL
        self.in_flight.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failure == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if self.failure == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if self.failure == "500":
            return httpx.Response(500, text="oops")
        if self.failure == "not_json":
            return httpx.Response(200, text="<html>maintenance</html>")
        return httpx.Response(200, json=self.document)


FAILURES = ["connect", "timeout", "500", "not_json"]  # also the test ids


@pytest.fixture
def host() -> JwksHost:
    return JwksHost()


@pytest.fixture
def clock() -> Clock:
    return Clock(1_760_000_000.0)


@pytest.fixture
async def client(host: JwksHost) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(host.handler)) as client:
        yield client


def make_cache(client: httpx.AsyncClient, clock: Clock, **options: Any) -> JwksCache:
    options.setdefault("max_age_s", 3600.0)
    options.setdefault("refetch_interval_s", 30.0)
    return JwksCache(client, JWKS_URL, clock=clock, **options)


async def test_first_use_fetches(host: JwksHost, client: httpx.AsyncClient, clock: Clock) -> None:
    """The first `keys()` call fetches the JWKS and returns its Ed25519 keys."""
    cache = make_cache(client, clock)
    assert host.requests == 0
    assert raw(await cache.keys()) == raw_of(KEY_A)
    assert (host.requests, cache.fetches, cache.generation) == (1, 1, 1)


async def test_cached_within_max_age(host: JwksHost, client: httpx.AsyncClient, clock: Clock) -> None:
    """Within the max age the cached keys are returned without another request."""
    cache = make_cache(client, clock, max_age_s=3600.0)
    await cache.keys()
    host.serve(KEY_B)
    clock.advance(3599)
    assert raw(await cache.keys()) == raw_of(KEY_A)
    assert host.requests == 1


async def test_refetch_after_max_age(host: JwksHost, client: httpx.AsyncClient, clock: Clock) -> None:
    """Once the keys are max-age old, the next `keys()` refetches and returns the new set."""
    cache = make_cache(client, clock, max_age_s=3600.0)
    await cache.keys()
    host.serve(KEY_B)
    clock.advance(3600)
    assert raw(await cache.keys()) == raw_of(KEY_B)
    assert host.requests == 2


async def test_max_age_is_capped_at_24_hours(host: JwksHost, client: httpx.AsyncClient, clock: Clock) -> None:
    """A configured max age above 24 h is capped: keys are refetched after a day regardless."""
    cache = make_cache(client, clock, max_age_s=7 * 86400.0)
    assert cache.max_age_s == MAX_AGE_S == 86400.0
    await cache.keys()
    host.serve(KEY_B)
    clock.advance(86400 - 1)
    assert raw(await cache.keys()) == raw_of(KEY_A)
    clock.advance(1)
    assert raw(await cache.keys()) == raw_of(KEY_B)
    assert host.requests == 2


@pytest.mark.parametrize("failure", FAILURES, ids=FAILURES)
async def test_host_down_after_good_fetch_keeps_old_keys(
    host: JwksHost, client: httpx.AsyncClient, clock: Clock, failure: str
) -> None:
    """When the refetch of expired keys fails, the last good keys keep being returned (stale beats none)."""
    cache = make_cache(client, clock, max_age_s=3600.0)
    await cache.keys()
    host.failure = failure
    clock.advance(3600)
    assert raw(await cache.keys()) == raw_of(KEY_A)
    assert host.requests == 2
    clock.advance(5)
    assert raw(await cache.keys()) == raw_of(KEY_A)  # keeps trying, keeps serving the old keys
    assert host.requests == 3


@pytest.mark.parametrize("failure", FAILURES, ids=FAILURES)
async def test_host_down_with_nothing_cached_is_unavailable(
    host: JwksHost, client: httpx.AsyncClient, clock: Clock, failure: str
) -> None:
    """With no keys ever fetched and the host failing, `keys()` raises VerificationUnavailable (a 503)."""
    cache = make_cache(client, clock)
    host.failure = failure
    with pytest.raises(VerificationUnavailable) as caught:
        await cache.keys()
    assert caught.value.status_code == 503
    assert cache.generation == 0


async def test_recovers_when_the_host_comes_back(host: JwksHost, client: httpx.AsyncClient, clock: Clock) -> None:
    """After a failed first fetch, a later `keys()` call fetches again once the host is back."""
    cache = make_cache(client, clock)
    host.failure = "connect"
    with pytest.raises(VerificationUnavailable):
        await cache.keys()
    host.failure = None
    clock.advance(1)
    assert raw(await cache.keys()) == raw_of(KEY_A)
    assert host.requests == 2


async def test_refresh_for_unknown_key_picks_up_rotation(
    host: JwksHost, client: httpx.AsyncClient, clock: Clock
) -> None:
    """`refresh_for_unknown_key` refetches (past the rate limit) and reports that a new key set arrived."""
    cache = make_cache(client, clock, refetch_interval_s=30.0)
    await cache.keys()
    host.serve(KEY_A, KEY_B)
    clock.advance(30)
    assert await cache.refresh_for_unknown_key() is True
    assert raw(await cache.keys()) == raw_of(KEY_A, KEY_B)
    assert host.requests == 2


async def test_refresh_for_unknown_key_is_rate_limited(host: JwksHost, client: httpx.AsyncClient, clock: Clock) -> None:
    """Refetches for unknown keys happen at most once per `refetch_interval_s`; limited calls return False."""
    cache = make_cache(client, clock, refetch_interval_s=30.0)
    await cache.keys()
    host.serve(KEY_B)
    for _ in range(5):
        assert await cache.refresh_for_unknown_key() is False
    clock.advance(29.9)
    assert await cache.refresh_for_unknown_key() is False
    assert host.requests == 1
    clock.advance(0.1)
    assert await cache.refresh_for_unknown_key() is True
    assert await cache.refresh_for_unknown_key() is False
    assert host.requests == 2
    assert raw(await cache.keys()) == raw_of(KEY_B)


async def test_refresh_for_unknown_key_with_host_down(host: JwksHost, client: httpx.AsyncClient, clock: Clock) -> None:
    """A refetch that fails reports no new keys and leaves the cached keys in place."""
    cache = make_cache(client, clock, refetch_interval_s=0.0)
    await cache.keys()
    host.failure = "500"
    assert await cache.refresh_for_unknown_key() is False
    assert raw(await cache.keys()) == raw_of(KEY_A)
    assert host.requests == 2


@pytest.mark.parametrize(
    "document",
    [
        {"keys": []},
        {"keys": [{"kty": "RSA", "n": "sXch", "e": "AQAB"}]},
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "tooshort"}]},
        {"not": "a jwks"},
    ],
    ids=["empty", "rsa_only", "bad_x", "no_keys_list"],
)
async def test_jwks_without_usable_keys_keeps_previous_keys(
    host: JwksHost, client: httpx.AsyncClient, clock: Clock, document: Any
) -> None:
    """A fetched JWKS with no usable Ed25519 key does not replace the keys we have."""
    cache = make_cache(client, clock, refetch_interval_s=0.0)
    await cache.keys()
    host.document = document
    assert await cache.refresh_for_unknown_key() is False
    assert raw(await cache.keys()) == raw_of(KEY_A)
    assert cache.generation == 1


async def test_concurrent_refreshes_make_one_request(host: JwksHost, client: httpx.AsyncClient, clock: Clock) -> None:
    """Many concurrent refreshes while a fetch is in flight share it: one request, all see the new keys."""
    cache = make_cache(client, clock, refetch_interval_s=0.0)
    await cache.keys()
    host.serve(KEY_B)
    host.gate = asyncio.Event()
    host.in_flight.clear()
    refreshes = [asyncio.create_task(cache.refresh_for_unknown_key()) for _ in range(20)]
    await host.in_flight.wait()
    host.gate.set()
    assert await asyncio.gather(*refreshes) == [True] * 20
    assert host.requests == 2
    assert raw(await cache.keys()) == raw_of(KEY_B)


async def test_concurrent_first_use_makes_one_request(host: JwksHost, client: httpx.AsyncClient, clock: Clock) -> None:
    """Concurrent first `keys()` calls share one fetch."""
    cache = make_cache(client, clock)
    host.gate = asyncio.Event()
    callers = [asyncio.create_task(cache.keys()) for _ in range(20)]
    await host.in_flight.wait()
    host.gate.set()
    results = await asyncio.gather(*callers)
    assert all(raw(keys) == raw_of(KEY_A) for keys in results)
    assert host.requests == 1
