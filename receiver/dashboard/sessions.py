"""Dashboard sessions without the HTTP around them: signed cookie values, CSRF tokens, the login guard.

The cookie holds `<session id>.<expiry>.<mac>`, nothing secret: the mac is HMAC-SHA256 under a key derived
(HKDF) from `RECEIVER_SECRET_KEY`, salted with a hash of `RECEIVER_API_TOKEN`, so changing either logs every
session out. A session's CSRF token is an HMAC of its id under the same key.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response

COOKIE = "receiver_session"
SESSION_S = 12 * 3600  # a session lasts a working day; then the token is asked for again
KEY_INFO = b"receiver dashboard sessions v1"
FAILED_LOGIN_DELAY_S = 0.25  # every failed login waits this long, one at a time: at most 4 guesses a second
MAX_FAILED_LOGINS = 10  # per LOGIN_WINDOW_S and process; past it every login is refused unchecked
LOGIN_WINDOW_S = 60.0
_COOKIE_VALUE = re.compile(r"([0-9a-f]{32})\.([0-9]{1,12})\.([0-9a-f]{64})")


@dataclass(frozen=True, slots=True)
class Session:
    """A dashboard session: `signed_in` when the operator logged in with the token (else the dashboard is
    open and the session only carries the CSRF token); `fresh` when minted by this request."""

    sid: str
    expires_at: int
    csrf: str
    signed_in: bool
    fresh: bool = False


class LoginGuard:
    """Failed logins, per process: each one waits `delay_s` (one at a time), and past `max_failures` within
    `window_s` every attempt is refused unchecked, so the answer tells nothing about the token."""

    def __init__(
        self,
        *,
        delay_s: float = FAILED_LOGIN_DELAY_S,
        max_failures: int = MAX_FAILED_LOGINS,
        window_s: float = LOGIN_WINDOW_S,
    ) -> None:
        self.delay_s, self.max_failures, self.window_s = delay_s, max_failures, window_s
        self.failures: collections.deque[float] = collections.deque()
        self.lock = asyncio.Lock()

    def retry_after_s(self, now: float) -> float | None:
        """Seconds until a login may be tried again; None when it may be tried now."""
        while self.failures and self.failures[0] <= now - self.window_s:
            self.failures.popleft()
        if len(self.failures) < self.max_failures:
            return None
        return self.failures[0] + self.window_s - now

    async def failed(self, now: float) -> None:
        """Count a failed login and hold its answer back (failures queue up behind each other)."""
        self.failures.append(now)
        async with self.lock:
            await asyncio.sleep(self.delay_s)


class DashboardAuth:
    """The session key and the login guard of one app; `open` when no API token is set."""

    def __init__(self, *, secret: bytes, token: str | None, guard: LoginGuard | None = None) -> None:
        self.open = token is None
        token_digest = hashlib.sha256(token.encode()).digest() if token is not None else b""
        # The token's hash salts the key: a new token (or secret key) voids every session made before it.
        salt = token_digest or None
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=KEY_INFO).derive(secret)
        self._token_digest = token_digest
        self.guard = guard or LoginGuard()
        # Sessions logged out before their expiry (sid -> expiry): their cookie, copied or kept, opens nothing.
        self.revoked: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"DashboardAuth(open={self.open})"  # never the key nor the token

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        """Constant time: digests of equal length are compared, so not even the token's length leaks."""
        if self.open:
            return False
        given_digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(given_digest, self._token_digest)

    def mint(self, now: float) -> tuple[Session, str]:
        """A new session and its cookie value."""
        sid, expires_at = secrets.token_hex(16), int(now) + SESSION_S
        body = f"{sid}.{expires_at}"
        session = Session(sid, expires_at, self._mac(f"csrf.{sid}"), signed_in=not self.open, fresh=True)
        return session, f"{body}.{self._mac(body)}"

    def read(self, cookie: str | None, now: float) -> Session | None:
        """The session a cookie value holds; None when it is missing, malformed, forged or expired."""
        match = _COOKIE_VALUE.fullmatch(cookie or "")
        if match is None:
            return None
        sid, expires_text, mac = match.groups()
        if not hmac.compare_digest(mac, self._mac(f"{sid}.{expires_text}")):
            return None
        expires_at = int(expires_text)
        if expires_at <= now or sid in self.revoked:
            return None
        return Session(sid, expires_at, self._mac(f"csrf.{sid}"), signed_in=not self.open)

    def revoke(self, session: Session, now: float) -> None:
        """Log a session out for good (in this process), forgetting those that expired anyway. Only a signed-in
        one: an open dashboard's sessions guard nothing but CSRF, and anyone could mint those without end."""
        if not session.signed_in:
            return
        for sid in [sid for sid, expires_at in self.revoked.items() if expires_at <= now]:
            del self.revoked[sid]
        self.revoked[session.sid] = session.expires_at

    def csrf_matches(self, session: Session, given: object) -> bool:
        return isinstance(given, str) and hmac.compare_digest(given.encode(), session.csrf.encode())


def csrf_field(session: Session) -> Markup:
    """The hidden `csrf` input every dashboard form carries."""
    return Markup('<input type="hidden" name="csrf" value="{}">').format(session.csrf)


def local_path(raw: str | None) -> str:
    """`raw` when it is a path on this server (`/jobs/x?y`), else `/`: never another host, scheme or a
    protocol-relative URL (`//evil`, `/\\evil`), so a `next` cannot send the operator elsewhere."""
    if not raw or not raw.startswith("/") or raw.startswith("//") or "\\" in raw or not raw.isprintable():
        return "/"
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc:
        return "/"
    return raw


def secure_request(request: Request) -> bool:
    """Whether the browser reached us over https: the request says so (directly, or through a proxy whose
    headers uvicorn trusts), or it names the host of an https `RECEIVER_PUBLIC_URL` (a proxy ends TLS)."""
    if request.url.scheme == "https":
        return True
    settings = getattr(getattr(request.app.state, "services", None), "settings", None)
    public = urlsplit(str(getattr(settings, "public_url", "")))
    return public.scheme == "https" and public.hostname is not None and public.hostname == request.url.hostname


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, Secure over https, for SESSION_S."""
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_S,
        path="/",
        secure=secure_request(request),
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", secure=secure_request(request), httponly=True, samesite="strict")


def remember_session(request: Request, response: Response) -> None:
    """Set the cookie of a session this request minted (an open dashboard's first visit) on `response`."""
    cookie = getattr(request.state, "dashboard_cookie", None)
    if cookie is not None:
        set_session_cookie(request, response, cookie)
