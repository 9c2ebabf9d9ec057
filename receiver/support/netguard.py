"""The SSRF guard for every outbound request to a URL someone else chose (result images, inputs, notifications).

Resolve the host once, refuse any address that is not global (loopback, private, link-local, the cloud
metadata address, multicast, reserved, and the IPv4-mapped forms of those), then connect to that very
address: the URL's host is replaced by the checked IP, the `Host` header and the TLS SNI keep the real
name, so a second DNS answer cannot swap the target (no rebinding) and TLS is still verified against
the hostname. Only https, unless `allow_private` (development against loopback emulators), which also
allows http and non-global addresses. `check_url` holds the checks that need no DNS, so a notification
target is judged by the same code when it is stored and when it is sent to. Messages name the host the
URL gave, never an address it resolved to.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
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


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")  # `127.1`, `0x7f.1`: what inet_aton reads as an address
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")  # urlsplit drops tabs and newlines silently: refuse, never guess


@dataclass(frozen=True, slots=True)
class CheckedUrl:
    """A URL that passed every check needing no DNS: `hostname` is lowercase (IDNA ASCII for a name)."""

    scheme: str
    hostname: str
    port: int | None  # as written in the URL
    literal: IPAddress | None  # the host when it is an IP address
    path: str
    query: str

    @property
    def connect_port(self) -> int:
        return self.port or (443 if self.scheme == "https" else 80)


def _host_name(hostname: str) -> str:
    try:
        # The ASCII (IDNA) form is what DNS, the Host header and SNI carry, and what the allow-list matches.
        ascii_name = hostname.encode("idna").decode("ascii").rstrip(".")
    except UnicodeError:
        raise BlockedTarget("URL host is not a valid host name") from None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise BlockedTarget("URL host is not a valid host name")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise BlockedTarget("URL host is not a valid host name (nor a valid IP address)")
    return ascii_name


def _is_localhost(hostname: str) -> bool:
    """`localhost` and `*.localhost` (RFC 6761): loopback by definition, known without asking DNS."""
    return hostname == "localhost" or hostname.endswith(".localhost")


def check_url(url: str, *, allow_private: bool, allowed_hosts: Collection[str] | None = None) -> CheckedUrl:
    """Every check that needs no DNS, the same when a target is stored and when it is sent to: the URL
    parses, the scheme is https (or http with `allow_private`), there is a host and no credentials, the
    port is 1-65535, a name is a valid host name and not `localhost` or `*.localhost`, only an IPv6 address
    is in brackets, an IP literal is global (the loopback names and non-global literals pass with
    `allow_private`) and the host is on `allowed_hosts` when given. Raises BlockedTarget; its message never
    shows more than the host the URL names."""
    if _UNSAFE.search(url):
        raise BlockedTarget("not a valid URL: it contains control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        raise BlockedTarget(f"not a valid URL: {exc}") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise BlockedTarget(f"{parts.scheme or 'no'} scheme is not allowed (use {' or '.join(schemes)})")
    hostname = (parts.hostname or "").lower()
    if not hostname:
        raise BlockedTarget("URL has no host")
    if " " in parts.netloc:
        raise BlockedTarget("not a valid URL: a space in the host or port")
    if parts.username is not None or parts.password is not None:
        raise BlockedTarget("URLs with credentials are not allowed")
    if port == 0:
        raise BlockedTarget("not a valid URL: port 0 cannot be connected to")
    try:
        literal: IPAddress | None = ipaddress.ip_address(hostname)
    except ValueError:
        literal = None
    if parts.netloc.rpartition("@")[2].startswith("[") and not isinstance(literal, ipaddress.IPv6Address):
        # urlsplit reads `[v1.x]` (an RFC 3986 IPvFuture literal) as the host name `v1.x`: nothing can send to it.
        raise BlockedTarget("not a valid URL: only an IPv6 address may be written in brackets")
    if literal is None:
        hostname = _host_name(hostname)
        if not allow_private and _is_localhost(hostname):
            raise BlockedTarget(f"host {hostname} is a loopback name")
    elif not allow_private and not is_public(literal):
        raise BlockedTarget(f"host {hostname} is a non-public address")
    if allowed_hosts is not None and not host_allowed(hostname, allowed_hosts):
        raise BlockedTarget(f"host {hostname} is not on the allow-list")
    return CheckedUrl(parts.scheme, hostname, port, literal, parts.path, parts.query)


@dataclass(frozen=True, slots=True)
class Pinned:
    """A checked request target: connect to `url` (the IP), send `host_header`, verify TLS as `hostname`."""

    url: str
    hostname: str
    host_header: str
    address: str

    def scrub(self, text: str) -> str:
        """`text` with the address we connected to replaced by the host name the URL gave."""
        return text.replace(self.address, self.hostname) if self.address != self.hostname else text


async def pin(
    url: str,
    *,
    allow_private: bool,
    allowed_hosts: Collection[str] | None = None,
    resolver: Resolver = system_resolver,
) -> Pinned:
    """Check `url` and resolve its host once; raises BlockedTarget or RetryLaterError (DNS failure)."""
    checked = check_url(url, allow_private=allow_private, allowed_hosts=allowed_hosts)
    hostname = checked.hostname
    if checked.literal is not None:
        addresses = [str(checked.literal)]
    else:
        try:
            addresses = await resolver(hostname, checked.connect_port)
        except OSError as exc:
            raise RetryLaterError(f"cannot resolve {hostname}: {exc}", code="dns_failure") from exc
    if not addresses:
        raise RetryLaterError(f"{hostname} resolved to no address", code="dns_failure")
    resolved = [ipaddress.ip_address(a.split("%")[0]) for a in addresses]
    if not allow_private and not all(is_public(a) for a in resolved):
        # The address itself is not shown: it would tell a caller what our DNS sees inside the network.
        raise BlockedTarget(f"host {hostname} resolves to a non-public address")
    address = resolved[0]
    netloc_host = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{netloc_host}:{checked.port}" if checked.port else netloc_host
    pinned_url = urlunsplit((checked.scheme, netloc, checked.path or "/", checked.query, ""))
    header_host = f"[{hostname}]" if ":" in hostname else hostname  # an IPv6 literal keeps its brackets
    host_header = f"{header_host}:{checked.port}" if checked.port else header_host
    return Pinned(pinned_url, hostname, host_header, str(address))


async def refuse_private_names(
    url: str, *, allow_private: bool, resolver: Resolver = system_resolver, timeout_s: float
) -> None:
    """When a target is stored: BlockedTarget if its name resolves to a non-public address now. A lookup
    that fails or takes longer than `timeout_s` passes: DNS may be down for a moment, and every send
    resolves and checks again."""
    if allow_private:
        return
    try:
        async with asyncio.timeout(timeout_s):
            await pin(url, allow_private=False, resolver=resolver)
    except (RetryLaterError, TimeoutError):
        return


# httpx pools connections by the URL's origin, which after pinning is the IP: on a client shared by every
# host, a connection opened (and TLS-verified) for one host name would be reused for another name on the
# same IP, with the wrong SNI and no certificate check for the second name (and CDNs answer 421 to such a
# request). So a guarded request on a plain shared client asks for its connection to be closed after the
# response (HTTP/1.1: the clients have no HTTP/2); `PinnedPools` keeps connections alive instead, in one
# pool per (scheme, address, port, host name), so a connection only ever serves the name it was opened for.
_ONE_SHOT = {"Connection": "close"}


class PinnedPools:
    """Keep-alive connection pools for guarded requests: one `httpx.AsyncClient` per checked target (scheme,
    pinned address, port and host name), made on first use and kept while in use. A new DNS answer is a
    new address, so a new pool; a pool idle when more than `max_targets` are held is closed (least recently
    used first). `limits` apply per target (so one slow target holds only its own connections)."""

    def __init__(
        self,
        *,
        timeout: httpx.Timeout,
        limits: httpx.Limits,
        headers: dict[str, str] | None = None,
        max_targets: int = 64,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.timeout = timeout
        self.verify = verify
        self.limits = limits
        self.headers = headers or {}
        self.max_targets = max_targets
        self._clients: dict[tuple[str, str], httpx.AsyncClient] = {}  # insertion order = least recently used
        self._in_use: dict[tuple[str, str], int] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _key(self, target: Pinned) -> tuple[str, str]:
        origin = target.url[: target.url.find("/", target.url.find("//") + 2)]  # scheme://address:port
        return origin, target.host_header

    @contextlib.asynccontextmanager
    async def lease(self, target: Pinned) -> AsyncIterator[httpx.AsyncClient]:
        key = self._key(target)
        client = self._clients.pop(key, None)
        if client is None:
            client = httpx.AsyncClient(
                follow_redirects=False, timeout=self.timeout, limits=self.limits, headers=self.headers,
                verify=self.verify,
            )  # fmt: skip
            self._evict_idle()
        self._clients[key] = client  # most recently used last
        self._in_use[key] = self._in_use.get(key, 0) + 1
        try:
            yield client
        finally:
            left = self._in_use[key] - 1
            if left:
                self._in_use[key] = left
            else:
                del self._in_use[key]
                if self._clients.get(key) is not client:  # evicted or replaced meanwhile
                    self._close_later(client)

    def _evict_idle(self) -> None:
        for key in list(self._clients):
            if len(self._clients) < self.max_targets:
                return
            if key not in self._in_use:
                self._close_later(self._clients.pop(key))

    def _close_later(self, client: httpx.AsyncClient) -> None:
        task = asyncio.get_running_loop().create_task(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


Client = httpx.AsyncClient | PinnedPools


async def guarded_request(
    client: Client,
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
    return await request_pinned(client, method, target, headers=headers, **kwargs)


async def request_pinned(
    client: Client, method: str, target: Pinned, *, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    """One request to an already pinned target; redirects are never followed."""
    extensions = {"sni_hostname": target.hostname}
    if isinstance(client, PinnedPools):
        all_headers = {**(headers or {}), "Host": target.host_header}
        async with client.lease(target) as pooled:
            return await pooled.request(
                method, target.url, headers=all_headers, extensions=extensions, follow_redirects=False, **kwargs
            )
    all_headers = {**(headers or {}), **_ONE_SHOT, "Host": target.host_header}
    return await client.request(
        method, target.url, headers=all_headers, extensions=extensions, follow_redirects=False, **kwargs
    )


@contextlib.asynccontextmanager
async def guarded_stream(
    client: Client, target: Pinned, *, headers: dict[str, str] | None = None, **kwargs: Any
) -> AsyncIterator[httpx.Response]:
    """`client.stream("GET", ...)` to an already pinned target (for size-capped downloads)."""
    extensions = {"sni_hostname": target.hostname}
    if isinstance(client, PinnedPools):
        all_headers = {**(headers or {}), "Host": target.host_header}
        async with (
            client.lease(target) as pooled,
            pooled.stream(
                "GET", target.url, headers=all_headers, extensions=extensions, follow_redirects=False, **kwargs
            ) as response,
        ):
            yield response
        return
    all_headers = {**(headers or {}), **_ONE_SHOT, "Host": target.host_header}
    async with client.stream(
        "GET", target.url, headers=all_headers, extensions=extensions, follow_redirects=False, **kwargs
    ) as response:
        yield response
