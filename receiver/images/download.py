"""Downloading images from URLs someone else chose (results, inputs) through the SSRF guard, with caps.

Every hop is checked and pinned by `netguard.pin` (scheme, allow-list, global addresses only), redirects
are followed by hand so each new URL is checked the same way, and the body is streamed with a byte cap.
Failures split as the caller needs them: `GiveUpError` (with a code) for what will never work,
`RetryLaterError` for what may work later.

    blocked_target      netguard refused the URL (scheme, credentials, host, address)      give up
    not_found           404 or 410                                                          give up
    http_<status>       any other answer that is neither 200 nor a redirect nor retryable   give up
    too_large           over `max_bytes` (Content-Length, streamed count or data URI)       give up
    too_many_redirects  more than `max_redirects` redirects                                 give up
    tls_verification_failed  the server's certificate is not valid for the host name        give up
    bad_data_uri        a `data:` URL that is not base64                                    give up
    http_429, http_5xx  the host is busy or broken (with Retry-After when it sent one)      retry later
    timeout, unreachable, dns_failure  network trouble                                      retry later

Messages name the host and path but never the query string (result URLs are often pre-signed).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from receiver.errors import GiveUpError, RetryLaterError
from receiver.observability import metrics
from receiver.results import decode_data_uri
from receiver.support.netguard import Pinned, Resolver, guarded_stream, pin, system_resolver
from receiver.tasks.retry import parse_retry_after

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
REQUEST_HEADERS = {
    "Accept": "image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5",
    "Accept-Encoding": "identity",  # images do not compress; a server that does anyway is capped on decoded bytes
}


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Limits for one fetch. `allow_private` also allows `http` and non-global addresses (loopback emulators
    in development). `timeout_s` bounds each read, write and pool wait, `connect_timeout_s` each connect,
    and `total_timeout_s` the whole fetch, all hops included (so a slow drip cannot hold a worker)."""

    max_bytes: int = 50 * 1024 * 1024
    allow_private: bool = False
    timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_redirects: int = 3
    total_timeout_s: float = 120.0

    @property
    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s)


@dataclass(frozen=True, slots=True)
class Fetched:
    """A downloaded body. `content_type` is the media type the server declared (lowercase, no parameters),
    `final_url` the URL (after redirects) that answered; for a data URI both come from the URI itself."""

    data: bytes
    content_type: str | None
    final_url: str


async def fetch_url(
    client: httpx.AsyncClient,
    url: str,
    policy: FetchPolicy,
    *,
    allowed_hosts: Collection[str] | None = None,
    resolver: Resolver = system_resolver,
) -> Fetched:
    """GET `url` through the SSRF guard, following at most `policy.max_redirects` redirects.

    `allowed_hosts` (exact names or `*.suffix`) applies to every hop; None allows any public host.
    Raises GiveUpError or RetryLaterError with the codes in the module docstring.
    """
    if url[:5].lower() == "data:":
        return _from_data_uri(url, policy)
    try:
        async with asyncio.timeout(policy.total_timeout_s):
            return await _follow(client, url, policy, allowed_hosts, resolver)
    except TimeoutError:
        raise RetryLaterError(
            f"fetching from {_describe(url)} took longer than {policy.total_timeout_s:g} s", code="timeout"
        ) from None


async def fetch_image_bytes(client: httpx.AsyncClient, url: str, policy: FetchPolicy) -> bytes:
    """The bytes of an input image given as a data URI or an http(s) URL (any public host: user input).

    The errors keep the input-image codes providers report: `bad_input_url` (refused or unusable URL),
    `input_too_large`, `bad_input_image` (a data URI that is not base64), and `input_unreachable` for
    every transient failure (with the host's Retry-After, if any).
    """
    try:
        return (await fetch_url(client, url, policy)).data
    except RetryLaterError as exc:
        raise RetryLaterError(
            f"input image: {exc.message}", retry_after_s=exc.retry_after_s, code="input_unreachable"
        ) from exc
    except GiveUpError as exc:
        code = {"too_large": "input_too_large", "bad_data_uri": "bad_input_image"}.get(exc.code, "bad_input_url")
        raise GiveUpError(f"input image: {exc.message}", code=code) from exc


def _from_data_uri(url: str, policy: FetchPolicy) -> Fetched:
    # The decoded bytes are at most 3/4 of a string already in memory, so decode first, then cap.
    try:
        content_type, data = decode_data_uri(url)
    except ValueError as exc:
        raise GiveUpError(f"data URI: {exc}", code="bad_data_uri") from None
    if len(data) > policy.max_bytes:
        raise GiveUpError(f"data URI holds more than {policy.max_bytes} bytes", code="too_large")
    return Fetched(data, content_type.lower() if content_type else None, url)


async def _follow(
    client: httpx.AsyncClient,
    url: str,
    policy: FetchPolicy,
    allowed_hosts: Collection[str] | None,
    resolver: Resolver,
) -> Fetched:
    current = url
    for _hop in range(policy.max_redirects + 1):
        target = await pin(current, allow_private=policy.allow_private, allowed_hosts=allowed_hosts, resolver=resolver)
        outcome = await _get(client, target, current, policy)
        if isinstance(outcome, Fetched):
            return outcome
        current = outcome
    raise GiveUpError(f"more than {policy.max_redirects} redirects from {_describe(url)}", code="too_many_redirects")


async def _get(client: httpx.AsyncClient, target: Pinned, url: str, policy: FetchPolicy) -> Fetched | str:
    """One GET to a pinned target: the body, or the next URL when the answer is a redirect."""
    where = _describe(url)
    try:
        async with guarded_stream(client, target, headers=REQUEST_HEADERS, timeout=policy.timeout) as response:
            status = response.status_code
            if status in REDIRECT_STATUSES and response.headers.get("location", "").strip():
                return urljoin(url, response.headers["location"].strip())
            _check_status(status, response.headers, where)
            data = await _read_capped(response, policy.max_bytes, where)
            metrics.IMAGE_BYTES.labels("fetched").inc(len(data))
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            return Fetched(data, content_type or None, url)
    except httpx.TimeoutException as exc:
        raise RetryLaterError(f"{where} timed out ({type(exc).__name__})", code="timeout") from exc
    except httpx.TransportError as exc:
        if _certificate_failed(exc):
            raise GiveUpError(
                f"{where}: the server's TLS certificate is not valid for {target.hostname}",
                code="tls_verification_failed",
            ) from exc
        raise RetryLaterError(f"cannot fetch from {where}: {type(exc).__name__}: {exc}", code="unreachable") from exc
    except httpx.InvalidURL as exc:
        raise GiveUpError(f"{where} is not a URL we can request: {exc}", code="blocked_target") from exc
    except httpx.HTTPError as exc:  # a body that cannot be decoded and the like: the host may fix it
        raise RetryLaterError(f"bad answer from {where}: {type(exc).__name__}: {exc}", code="unreachable") from exc


def _check_status(status: int, headers: httpx.Headers, where: str) -> None:
    if status == 200:
        return
    if status == 429 or status >= 500:
        raise RetryLaterError(
            f"{where} answered {status}",
            retry_after_s=parse_retry_after(headers.get("retry-after")),
            code=f"http_{status}",
        )
    if status in (404, 410):
        raise GiveUpError(f"{where} answered {status}: the file is gone", code="not_found")
    raise GiveUpError(f"{where} answered {status}", code=f"http_{status}")


async def _read_capped(response: httpx.Response, max_bytes: int, where: str) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise GiveUpError(f"{where} declares {declared} bytes; at most {max_bytes} are allowed", code="too_large")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise GiveUpError(f"{where} sent more than {max_bytes} bytes", code="too_large")
    return bytes(body)


def _certificate_failed(exc: BaseException) -> bool:
    """Whether a certificate check is behind `exc` (httpx wraps httpcore's error, which wraps ssl's)."""
    cause: BaseException | None = exc
    for _depth in range(8):  # a bounded walk: exception chains can be cyclic
        if cause is None:
            break
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _describe(url: str) -> str:
    """The URL without credentials, query or fragment, shortened: safe for messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an invalid URL"
    host = f"[{host}]" if ":" in host else host
    text = f"{parts.scheme}://{host}{port}{parts.path}"
    return text if len(text) <= 120 else text[:117] + "..."
