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
from contextlib import AbstractAsyncContextManager
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


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known NAT64 prefix: the last 32 bits are an IPv4 target
_IETF_V4 = ipaddress.IPv4Network("192.0.0.0/24")  # protocol assignments; older Pythons call most of it global


def is_public(address: IPAddress) -> bool:
    """Whether `address` is globally reachable unicast, also judging the IPv4 address embedded in IPv6 forms.

    `is_global` alone is not enough on every Python: 3.11 before 3.11.10 calls `::7f00:1` (IPv4-compatible),
    `::ffff:0:7f00:1` (IPv4-translated), `64:ff9b::7f00:1` (NAT64), `fec0::1` (site-local), `192.0.0.8` and
    multicast global, so reserved, site-local, IETF-assignment and multicast ranges are refused explicitly.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
        if address.is_site_local:
            return False
    elif address in _IETF_V4:
        return False
    return address.is_global and not address.is_multicast and not address.is_reserved


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
    try:
        parts = urlsplit(url)
        explicit_port = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        raise BlockedTarget(f"not a valid URL: {exc}") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise BlockedTarget(f"{parts.scheme or 'no'} scheme is not allowed (use {' or '.join(schemes)})")
    hostname = (parts.hostname or "").lower()
    if not hostname:
        raise BlockedTarget("URL has no host")
    if parts.username or parts.password:
        raise BlockedTarget("URLs with credentials are not allowed")
    try:
        literal: IPAddress | None = ipaddress.ip_address(hostname)
    except ValueError:
        literal = None
    if literal is None:
        try:
            # The ASCII (IDNA) form is what DNS, the Host header and SNI carry, and what the allow-list matches.
            hostname = hostname.encode("idna").decode("ascii")
        except UnicodeError:
            raise BlockedTarget("URL host is not a valid host name") from None
    if allowed_hosts is not None and not host_allowed(hostname, allowed_hosts):
        raise BlockedTarget(f"host {hostname} is not on the allow-list")
    port = explicit_port or (443 if parts.scheme == "https" else 80)
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
    netloc = f"{netloc_host}:{explicit_port}" if explicit_port else netloc_host
    pinned_url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    header_host = f"[{hostname}]" if ":" in hostname else hostname  # an IPv6 literal keeps its brackets
    host_header = f"{header_host}:{explicit_port}" if explicit_port else header_host
    return Pinned(pinned_url, hostname, host_header, str(address))


# httpx pools connections by the URL's origin, which after pinning is the IP: without this a connection
# opened (and TLS-verified) for one host name would be reused for another name on the same IP, with the
# wrong SNI and no certificate check for the second name (and CDNs answer 421 to such a request). So
# every guarded request asks for its connection to be closed after the response (HTTP/1.1: the shared
# client has no HTTP/2).
_ONE_SHOT = {"Connection": "close"}


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
    all_headers = {**(headers or {}), **_ONE_SHOT, "Host": target.host_header}
    extensions = {"sni_hostname": target.hostname}
    return await client.request(
        method, target.url, headers=all_headers, extensions=extensions, follow_redirects=False, **kwargs
    )


def guarded_stream(
    client: httpx.AsyncClient, target: Pinned, *, headers: dict[str, str] | None = None, **kwargs: Any
) -> AbstractAsyncContextManager[httpx.Response]:
    """`client.stream("GET", ...)` to an already pinned target (for size-capped downloads)."""
    all_headers = {**(headers or {}), **_ONE_SHOT, "Host": target.host_header}
    return client.stream(
        "GET", target.url, headers=all_headers, extensions={"sni_hostname": target.hostname},
        follow_redirects=False, **kwargs,
    )  # fmt: skip
