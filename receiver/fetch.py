"""Fetching images the user pointed at (input URLs for providers that want bytes), with a size cap."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from receiver.errors import GiveUpError, RetryLaterError
from receiver.results import decode_data_uri


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """`allow_private` also allows `http` and non-global addresses (loopback emulators in development)."""

    max_bytes: int = 50 * 1024 * 1024
    allow_private: bool = False
    timeout_s: float = 30.0


async def check_target(url: str, policy: FetchPolicy) -> None:
    """Refuse schemes other than https, and hosts resolving to non-global addresses, unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise GiveUpError(f"input image URL {url[:100]!r} is not an http(s) URL", code="bad_input_url")
    if policy.allow_private:
        return
    if parts.scheme != "https":
        raise GiveUpError("input image URL must use https", code="bad_input_url")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RetryLaterError(f"cannot resolve {parts.hostname}: {exc}", code="input_unreachable") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global:
            raise GiveUpError(f"input image host {parts.hostname} is not a public address", code="bad_input_url")


async def fetch_image_bytes(client: httpx.AsyncClient, url: str, policy: FetchPolicy) -> bytes:
    """The bytes of an input image given as a data URI or an http(s) URL.

    Raises GiveUpError for what will never work (bad URL, 4xx, too large) and RetryLaterError for
    what may (network errors, 429, 5xx).
    """
    if url.startswith("data:"):
        try:
            return decode_data_uri(url)[1]
        except ValueError as exc:
            raise GiveUpError(f"input image data URI: {exc}", code="bad_input_image") from exc
    await check_target(url, policy)
    try:
        async with client.stream("GET", url, timeout=policy.timeout_s, follow_redirects=False) as response:
            if response.status_code == 429 or response.status_code >= 500:
                raise RetryLaterError(f"input image host answered {response.status_code}", code="input_unreachable")
            if response.status_code != 200:
                raise GiveUpError(f"input image URL answered {response.status_code}", code="bad_input_url")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > policy.max_bytes:
                    raise GiveUpError(f"input image is larger than {policy.max_bytes} bytes", code="input_too_large")
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise RetryLaterError(f"cannot fetch input image: {exc!r}", code="input_unreachable") from exc
    return b"".join(chunks)
