"""The dashboard's login: `/login`, `/logout`, the session of each page request and the CSRF check of each form.

With `RECEIVER_API_TOKEN` set, the operator types the token once at `/login` and gets a session cookie
(HttpOnly, SameSite=Strict, Secure over https, expiring after `SESSION_S`; see `receiver.dashboard.sessions`).
Without a token (a loopback-only server) the dashboard is open, but a session cookie is still handed out,
because each form's CSRF token is tied to it. Failed logins are slowed down and capped per process
(`LoginGuard`), so the login form is no oracle for the token.

Page modules use `page_session`, `csrf_field` and `check_form`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.dashboard.sessions import (
    COOKIE,
    DashboardAuth,
    Session,
    clear_session_cookie,
    csrf_field,
    local_path,
    set_session_cookie,
)
from receiver.dashboard.templating import render, render_error
from receiver.errors import PayloadTooLargeError, RejectError
from receiver.storage import dashboard as dashboard_store
from receiver.web.http import error_response, read_body
from receiver.web.routes.common import services

__all__ = ["Session", "check_form", "csrf_field", "dashboard_auth", "page_session"]

FORM_MAX_BYTES = 64 * 1024  # the dashboard's forms are a few fields
FORM_TYPE = "application/x-www-form-urlencoded"


def dashboard_auth(request: Request) -> DashboardAuth:
    """The app's `DashboardAuth` (on `app.state`), made from its settings when first needed."""
    state = request.app.state
    auth: DashboardAuth | None = getattr(state, "dashboard_auth", None)
    if auth is None:
        svc = services(request)
        token = svc.settings.api_token
        auth = DashboardAuth(secret=svc.secret, token=token.get_secret_value() if token else None)
        state.dashboard_auth = auth
    return auth


async def current_session(request: Request, auth: DashboardAuth, now: float) -> Session | None:
    """The session the request's cookie holds, unless it was logged out: in this process (remembered) or in
    any other web process on the database (one indexed read, for signed-in sessions only)."""
    session = auth.read(request.cookies.get(COOKIE), now)
    if session is not None and session.signed_in:
        if await dashboard_store.session_revoked(services(request).db, session.sid, now=now):
            auth.revoke(session, now)  # remembered: this process refuses it without asking again
            return None
    return session


def login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(local_path(target), safe='')}", status_code=303)


async def page_session(request: Request) -> Session | Response:
    """The request's session, or the answer to return as is: a 303 to `/login?next=...` for a page, a 401
    (the API's JSON error shape) for `/ui/...`. An open dashboard mints a session on a first visit (its
    cookie is set by `render`)."""
    auth = dashboard_auth(request)
    now = services(request).clock()
    session = await current_session(request, auth, now)
    if session is None and auth.open:
        session, cookie = auth.mint(now)
        request.state.dashboard_cookie = cookie
    if session is not None:
        request.state.dashboard_session = session
        return session
    if request.url.path.startswith("/ui/"):
        return error_response(401, "unauthorized", "log in to the dashboard at /login first")
    return login_redirect(request)


async def read_form(request: Request) -> FormData:
    """A urlencoded form body of at most FORM_MAX_BYTES (an empty body is an empty form); `RejectError`
    (400/413/415) otherwise."""
    body = await read_body(request, FORM_MAX_BYTES)
    if not body:
        return FormData()  # no fields at all (and so no CSRF token)
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != FORM_TYPE:
        raise RejectError(f"a dashboard form is sent as {FORM_TYPE}", code="unsupported_media_type")
    try:
        fields: list[tuple[str, str | UploadFile]] = [
            *parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
        ]
    except (UnicodeDecodeError, ValueError):
        raise RejectError("the form is not valid urlencoded UTF-8") from None
    return FormData(fields)


async def check_form(request: Request) -> tuple[Session, FormData] | Response:
    """The session and form of a dashboard POST whose `csrf` field matches its session; else the answer to
    return as is: 303 to `/login` without a session (token set), 403 without a session (open dashboard) or
    with a missing or wrong CSRF token, 4xx for a body that is no form. (`RequestHygiene` refused a
    cross-site POST before this.)"""
    auth = dashboard_auth(request)
    session = await current_session(request, auth, services(request).clock())
    if session is None:
        if not auth.open:
            return RedirectResponse("/login", status_code=303)
        return render_error(request, 403, "This form came without a session: reload the page and send it again.")
    try:
        form = await read_form(request)
    except (RejectError, PayloadTooLargeError) as exc:
        return render_error(request, exc.status_code, exc.message)
    if not auth.csrf_matches(session, form.get("csrf")):
        return render_error(request, 403, "The form's CSRF token is missing or wrong: reload the page, send it again.")
    request.state.dashboard_session = session
    return session, form


# --- routes -------------------------------------------------------------------------------------------


def login_page(request: Request, *, next_path: str, error: str | None = None, status: int = 200) -> Response:
    context: dict[str, Any] = {"next": next_path, "error": error, "nav": "login"}
    return render(request, "login.html", context, status_code=status)


async def login(request: Request) -> Response:
    """GET: the login form (straight on to `next` when signed in, or open). POST: check the token."""
    auth = dashboard_auth(request)
    now = services(request).clock()
    if request.method == "GET":
        next_path = local_path(request.query_params.get("next"))
        if auth.open or await current_session(request, auth, now) is not None:
            return RedirectResponse(next_path, status_code=303)
        return login_page(request, next_path=next_path)
    try:
        form = await read_form(request)
    except (RejectError, PayloadTooLargeError) as exc:
        return render_error(request, exc.status_code, exc.message)
    next_raw = form.get("next")
    next_path = local_path(next_raw if isinstance(next_raw, str) else None)
    if auth.open:
        return RedirectResponse(next_path, status_code=303)
    wait_s = auth.guard.retry_after_s(now)
    if wait_s is not None:
        message = "Too many failed logins: wait a minute, then try again."
        response = login_page(request, next_path=next_path, error=message, status=429)
        response.headers["Retry-After"] = str(max(1, round(wait_s)))
        return response
    token = form.get("token")
    if not auth.token_matches(token if isinstance(token, str) else ""):
        await auth.guard.failed(now)
        return login_page(request, next_path=next_path, error="That is not the API token.", status=401)
    _session, cookie = auth.mint(now)
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(request, response, cookie)
    return response


async def logout(request: Request) -> Response:
    """End the session: its cookie is cleared, and its id revoked in the database, so a copy of the cookie
    opens nothing either, in any web process (the CSRF check keeps other sites from logging you out)."""
    checked = await check_form(request)
    if isinstance(checked, Response):
        return checked
    auth = dashboard_auth(request)
    session, svc = checked[0], services(request)
    now = svc.clock()
    if session.signed_in:  # an open dashboard's sessions guard nothing but CSRF, and anyone could mint them
        await svc.db.write(
            lambda tx: dashboard_store.revoke_session(tx, session.sid, expires_at=session.expires_at, now=now)
        )
    auth.revoke(session, now)  # a copy of the cookie is void too, not just cleared
    response = RedirectResponse("/" if auth.open else "/login", status_code=303)
    clear_session_cookie(request, response)
    return response


ROUTES: list[BaseRoute] = [
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
]
