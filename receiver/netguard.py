"""The SSRF guard for every outbound request to a URL someone else chose (result images, inputs, notifications).

Resolve the host once, refuse any address that is not global (loopback, private, link-local, the cloud
metadata address, multicast, reserved, and the IPv4-mapped forms of those), then connect to that very
address: the URL's host is replaced by the checked IP, the `Host` header and the TLS SNI keep the real
name, so a second DNS answer cannot swap the target (no rebinding) and TLS is still verified against
the hostname. Only https, unless `allow_private` (development against loopback emulators), which also
allows http and non-global addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from receiver.errors import GiveUpError, RetryLaterError

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedTarget(GiveUpError):
    """The URL is not one we may contact (scheme, host allow-list, or a non-global address)."""

    code = "blocked_target"


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return is_public(mapped)
    return address.is_global and not address.is_multicast


def host_allowed(host: str, allowed_hosts: Collection[str]) -> bool:
    """`allowed_hosts` entries are exact names or `*.suffix` wildcards (which also match the bare suffix)."""
    host = host.lower().rstrip(".")
    for pattern in allowed_hosts:
        pattern = pattern.lower().strip()
        if pattern.startswith("*."):
            if host == pattern[2:] or host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Pinned:
    """A checked request target: connect to `url` (the IP), send `host_header`, verify TLS as `hostname`."""

    url: str
    hostname: str
    host_header: str
    address: str


async def pin(
    url: str,
    *,
    allow_private: bool,
    allowed_hosts: Collection[str] | None = None,
    resolver: Resolver = system_resolver,
) -> Pinned:
    """Check `url` and resolve its host once; raises BlockedTarget or RetryLaterError (DNS failure)."""
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise BlockedTarget(f"{parts.scheme or 'no'} scheme is not allowed (use {' or '.join(schemes)})")
    hostname = (parts.hostname or "").lower()
    if not hostname:
        raise BlockedTarget("URL has no host")
    if parts.username or parts.password:
        raise BlockedTarget("URLs with credentials are not allowed")
    if allowed_hosts is not None and not host_allowed(hostname, allowed_hosts):
        raise BlockedTarget(f"host {hostname} is not on the allow-list")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(hostname)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = await resolver(hostname, port)
        except OSError as exc:
            raise RetryLaterError(f"cannot resolve {hostname}: {exc}", code="dns_failure") from exc
    if not addresses:
        raise RetryLaterError(f"{hostname} resolved to no address", code="dns_failure")
    checked = [ipaddress.ip_address(a.split("%")[0]) for a in addresses]
    if not allow_private:
        blocked = [str(a) for a in checked if not is_public(a)]
        if blocked:
            raise BlockedTarget(f"host {hostname} resolves to a non-public address ({blocked[0]})")
    address = checked[0]
    netloc_host = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{netloc_host}:{parts.port}" if parts.port else netloc_host
    pinned_url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = f"{hostname}:{parts.port}" if parts.port else hostname
    return Pinned(pinned_url, hostname, host_header, str(address))


async def guarded_request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    allow_private: bool,
    allowed_hosts: Collection[str] | None = None,
    resolver: Resolver = system_resolver,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One request to a checked, pinned address; redirects are never followed (the caller decides)."""
    target = await pin(url, allow_private=allow_private, allowed_hosts=allowed_hosts, resolver=resolver)
    all_headers = {**(headers or {}), "Host": target.host_header}
    extensions = {"sni_hostname": target.hostname}
    return await client.request(
        method, target.url, headers=all_headers, extensions=extensions, follow_redirects=False, **kwargs
    )


def guarded_stream(
    client: httpx.AsyncClient, target: Pinned, *, headers: dict[str, str] | None = None, **kwargs: Any
) -> Any:
    """`client.stream("GET", ...)` to an already pinned target (for size-capped downloads)."""
    all_headers = {**(headers or {}), "Host": target.host_header}
    return client.stream(
        "GET", target.url, headers=all_headers, extensions={"sni_hostname": target.hostname},
        follow_redirects=False, **kwargs,
    )  # fmt: skip
