"""Request hygiene before routing: the `Host` a request names, and requests a browser sent cross-site.

Together with `application/json` only on JSON routes (`receiver.web.http.read_json`), these keep a web page the
operator happens to visit from using a token-less loopback instance: DNS rebinding (a page's own name
pointed at 127.0.0.1) is refused by the `Host` check, and a cross-site form, `fetch` or `EventSource` is
refused by its `Origin` / `Sec-Fetch-Site` headers (browsers set both; servers calling our webhooks and
API clients send neither): every write, and any request to the API, so a page can neither change state
nor hold the server's stream slots.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.web.http import error_response

STATE_CHANGING = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
# `same-site` is another origin too (a sibling subdomain, another port on a shared host): refused.
SAME_ORIGIN_SITES = frozenset({b"same-origin", b"none"})
DEFAULT_PORTS = {"http": 80, "https": 443}
ALLOWED_CACHE_SIZE = 256  # distinct allowed Host values remembered; past that they are checked each time
_HOST_NAME = re.compile(r"[a-z0-9._:-]+")
# A NUL or another control character in a path or query value names nothing we store, and PostgreSQL's text
# type cannot even hold NUL: such requests are refused here, before any of it reaches a query.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENCODED_CONTROL = re.compile(rb"%(?:[01][0-9a-fA-F]|7[fF])")


def split_host(value: str) -> tuple[str, int | None] | None:
    """(host, port) of a `Host` header value, lowercase, without IPv6 brackets or a trailing dot; None
    when it is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    else:
        host, _, port_text = value.partition(":")
    if port_text and not (port_text.isascii() and port_text.isdigit() and int(port_text[:6]) <= 65535):
        return None
    host = host.rstrip(".")
    if not host or not _HOST_NAME.fullmatch(host):
        return None
    return host, int(port_text) if port_text else None


def is_loopback_name(host: str) -> bool:
    """`localhost`, `*.localhost` (RFC 6761: never resolved through DNS) or a loopback address literal."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_origin(origin: str, host: tuple[str, int | None]) -> bool:
    """Whether a browser's `Origin` names the host (and port) the request was sent to."""
    try:
        parts = urlsplit(origin)
        origin_host, origin_port = parts.hostname, parts.port
    except ValueError:
        return False
    default = DEFAULT_PORTS.get(parts.scheme)
    if default is None or not origin_host:
        return False  # `null` (sandboxed or opaque origins), or not a web origin at all
    name, port = host
    return origin_host.rstrip(".") == name and (origin_port or default) == (port or default)


def same_address(host: str, listening: str) -> bool:
    """Whether `host` names the address a connection reached. An IPv4 client of a dual-stack socket (bound
    to `::`) reaches it as `::ffff:a.b.c.d`, which names the same address as `a.b.c.d`."""
    try:
        named, reached = ipaddress.ip_address(host), ipaddress.ip_address(listening)
    except ValueError:
        return host == listening.lower()
    return _unmapped(named) == _unmapped(reached)


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def guarded(scope: Scope) -> bool:
    """Whether a cross-site request to this route is refused: every write, and every `/v1` request (a page
    must not read the API nor hold a stream slot) but stored images, a capability URL that chat services
    and browsers fetch from anywhere by design."""
    path: str = scope.get("path", "")
    api = (path == "/v1" or path.startswith("/v1/")) and not path.startswith("/v1/images/")
    return api or scope["method"].encode() in STATE_CHANGING


def browser_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    """Every value of `Host`, `Origin` and `Sec-Fetch-Site`, in order (ASGI names are lowercase): a header
    sent twice must be seen twice, not as whichever value a dict happens to keep."""
    found: dict[bytes, list[bytes]] = {b"host": [], b"origin": [], b"sec-fetch-site": []}
    for name, value in raw:
        if name in found:
            found[name].append(value)
    return found


class RequestHygiene:
    """Refuses, before routing: a `Host` that is none of ours or is sent more than once (400 `bad_host`);
    and a request that `Sec-Fetch-Site` or `Origin` says another site sent (or that sends either twice) to
    any `/v1` route but `/v1/images/`, or with POST/PUT/PATCH/DELETE anywhere (403 `cross_site_request`)."""

    def __init__(self, app: ASGIApp, *, public_url: str, extra_hosts: Iterable[str] = ()) -> None:
        self.app = app
        public_host = urlsplit(public_url).hostname
        self.hosts = frozenset(host.rstrip(".").lower() for host in (public_host or "", *extra_hosts) if host)
        # (Host value, address reached) -> the parsed host, for hosts found allowed: the same few recur on
        # every request, and parsing them (address literals through `ipaddress`) cost the event loop ~10 us.
        self._allowed: dict[tuple[bytes, str | None], tuple[str, int | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = browser_headers(scope["headers"])
        hosts = headers[b"host"]
        host = self.allowed_host(hosts[0], scope) if len(hosts) == 1 else None  # RFC 9112 3.2: one Host
        if host is None:
            message = "the Host header names no address of this server; add it to RECEIVER_ALLOWED_HOSTS"
            if len(hosts) > 1:
                message = "the Host header is sent more than once"
            await error_response(400, "bad_host", message)(scope, receive, send)
            return
        if guarded(scope) and not self.same_origin_request(headers, host):
            message = "a request sent from another site (Origin / Sec-Fetch-Site) is refused"
            await error_response(403, "cross_site_request", message)(scope, receive, send)
            return
        if _CONTROL.search(scope.get("path", "")):
            await error_response(404, "not_found", "no such resource: the path holds a control character")(
                scope, receive, send
            )
            return
        query: bytes = scope.get("query_string", b"")
        if query and (_ENCODED_CONTROL.search(query) or _CONTROL.search(query.decode("latin-1"))):
            message = "the query string holds a control character (such as %00)"
            await error_response(400, "bad_request", message)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def allowed_host(self, value: bytes, scope: Scope) -> tuple[str, int | None] | None:
        """The (host, port) a `Host` value names when it is one of ours, else None."""
        server = scope.get("server")
        key = (value, None if server is None else str(server[0]))
        host = self._allowed.get(key)
        if host is None:
            host = split_host(value.decode("latin-1"))
            if host is None or not self.allowed(host[0], scope):
                return None
            if len(self._allowed) < ALLOWED_CACHE_SIZE:
                self._allowed[key] = host
        return host

    def allowed(self, host: str, scope: Scope) -> bool:
        server = scope.get("server")
        # The address the connection reached (the concrete one, even on a wildcard bind): an address
        # literal can never be rebound, and health probes use it.
        reached = server is not None and same_address(host, str(server[0]))
        return host in self.hosts or reached or is_loopback_name(host)

    @staticmethod
    def same_origin_request(headers: dict[bytes, list[bytes]], host: tuple[str, int | None]) -> bool:
        sites, origins = headers[b"sec-fetch-site"], headers[b"origin"]
        if len(sites) > 1 or len(origins) > 1:
            return False  # which one would a browser have meant? Refuse rather than guess.
        if sites and sites[0].strip().lower() not in SAME_ORIGIN_SITES:
            return False
        return not origins or same_origin(origins[0].decode("latin-1").strip(), host)
