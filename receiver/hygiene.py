"""Request hygiene before routing: the `Host` a request names, and state-changing requests sent cross-site.

Together with `application/json` only on JSON routes (`receiver.http.read_json`), these keep a web page the
operator happens to visit from using a token-less loopback instance: DNS rebinding (a page's own name
pointed at 127.0.0.1) is refused by the `Host` check, and a cross-site form or `fetch` that changes state
is refused by its `Origin` / `Sec-Fetch-Site` headers (browsers set both; servers calling our webhooks
send neither).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.http import error_response

STATE_CHANGING = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
# `same-site` is another origin too (a sibling subdomain, another port on a shared host): refused.
SAME_ORIGIN_SITES = frozenset({b"same-origin", b"none"})
DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"[a-z0-9._:-]+")


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


class RequestHygiene:
    """Refuses, before routing: a `Host` that is none of ours (400 `bad_host`), and POST/PUT/PATCH/DELETE
    whose `Sec-Fetch-Site` or `Origin` says another site sent it (403 `cross_site_request`)."""

    def __init__(self, app: ASGIApp, *, public_url: str, extra_hosts: Iterable[str] = ()) -> None:
        self.app = app
        public_host = urlsplit(public_url).hostname
        self.hosts = frozenset(host.rstrip(".").lower() for host in (public_host or "", *extra_hosts) if host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = split_host(headers.get(b"host", b"").decode("latin-1"))
        if host is None or not self.allowed(host[0], scope):
            message = "the Host header names no address of this server; add it to RECEIVER_ALLOWED_HOSTS"
            await error_response(400, "bad_host", message)(scope, receive, send)
            return
        if scope["method"].encode() in STATE_CHANGING and not self.same_origin_request(headers, host):
            message = "a state-changing request sent from another site (Origin / Sec-Fetch-Site) is refused"
            await error_response(403, "cross_site_request", message)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def allowed(self, host: str, scope: Scope) -> bool:
        server = scope.get("server")
        # The address the connection reached (the concrete one, even on a wildcard bind): an address
        # literal can never be rebound, and health probes use it.
        listening = str(server[0]).lower() if server else None
        return host in self.hosts or host == listening or is_loopback_name(host)

    @staticmethod
    def same_origin_request(headers: dict[bytes, bytes], host: tuple[str, int | None]) -> bool:
        site = headers.get(b"sec-fetch-site")
        if site is not None and site.strip().lower() not in SAME_ORIGIN_SITES:
            return False
        origin = headers.get(b"origin")
        return origin is None or same_origin(origin.decode("latin-1").strip(), host)
