"""Dashboard login over real HTTP: the session cookie, its signature and expiry, CSRF on forms, `next`."""

from __future__ import annotations

import re

import httpx
import pytest
from pydantic import SecretStr

from receiver.dashboard.assets import ASSETS
from receiver.dashboard.sessions import COOKIE, SESSION_S, DashboardAuth
from tests.helpers.clock import Clock
from tests.helpers.dashboard import browser, csrf_of, log_in, post_form, set_cookie_header
from tests.helpers.http import assert_error_shape
from tests.helpers.stack import ClockedStack, Stack, StackFactory

TOKEN = "dashboard-token-for-tests"


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack(workers=False, api_token=SecretStr(TOKEN))


async def test_pages_redirect_to_login_with_the_page_as_next(stack: Stack) -> None:
    """Without a session a page answers 303 to /login, naming the page (and its query) as `next`."""
    async with browser(stack.url) as client:
        home = await client.get("/")
        assert home.status_code == 303
        assert home.headers["location"] == "/login?next=%2F"
        deep = await client.get("/", params={"q": "a b", "status": "failed"})
        assert deep.headers["location"] == "/login?next=%2F%3Fq%3Da%2Bb%26status%3Dfailed"
        form = await client.get(deep.headers["location"])
        assert form.status_code == 200
        assert '<form id="login"' in form.text and 'name="token"' in form.text
        assert 'name="next" value="/?q=a+b&amp;status=failed"' in form.text


async def test_login_sets_a_strict_httponly_expiring_cookie(stack: Stack) -> None:
    """The right token gets a 303 to `next` and a signed HttpOnly, SameSite=Strict cookie with an expiry;
    the session then opens pages."""
    async with browser(stack.url) as client:
        response = await log_in(client, TOKEN, next_path="/?status=failed")
        assert response.headers["location"] == "/?status=failed"
        header = set_cookie_header(response).lower()
        assert "httponly" in header and "samesite=strict" in header and "path=/" in header
        assert f"max-age={SESSION_S}" in header
        assert "secure" not in header  # plain http on loopback: a Secure cookie would never come back
        assert TOKEN not in header
        page = await client.get("/")
        assert page.status_code == 200
        assert '<table id="jobs"' in page.text


async def test_the_cookie_is_secure_behind_an_https_public_url(make_stack: StackFactory) -> None:
    """A login through the host of an https RECEIVER_PUBLIC_URL (a proxy ending TLS) gets a Secure cookie."""
    stack = await make_stack(workers=False, api_token=SecretStr(TOKEN), public_url="https://hooks.example")
    async with browser(stack.url) as client:
        response = await client.post("/login", data={"token": TOKEN}, headers={"Host": "hooks.example"})
        assert response.status_code == 303
        assert "secure" in set_cookie_header(response).lower()
        direct = await client.post("/login", data={"token": TOKEN})
        assert "secure" not in set_cookie_header(direct).lower()


async def test_a_wrong_token_gets_no_session(stack: Stack) -> None:
    """A wrong (or empty, or longer) token answers 401 with the form again and sets no cookie."""
    async with browser(stack.url) as client:
        for wrong in ["nope", "", TOKEN + "x", TOKEN[:-1]]:
            response = await client.post("/login", data={"token": wrong})
            assert response.status_code == 401
            assert '<form id="login"' in response.text
            assert "set-cookie" not in response.headers
        assert (await client.get("/")).status_code == 303


async def test_a_tampered_cookie_is_refused(stack: Stack) -> None:
    """A session cookie with its signature, expiry or id changed opens nothing."""
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        good = client.cookies[COOKIE]
        sid, expires, mac = good.split(".")
        flipped = "0" if mac[-1] != "0" else "1"
        tampered = [
            f"{sid}.{expires}.{mac[:-1]}{flipped}",
            f"{sid}.{int(expires) + 3600}.{mac}",
            f"{'f' * 32}.{expires}.{mac}",
            f"{sid}.{expires}",
            "",
        ]
        for value in tampered:
            client.cookies.set(COOKIE, value)
            assert (await client.get("/")).status_code == 303, value
        client.cookies.set(COOKIE, good)
        assert (await client.get("/")).status_code == 200


async def test_a_session_expires(make_stack: StackFactory) -> None:
    """A session opens pages until its expiry, then sends the operator back to the login page."""
    stack = await make_stack(workers=False, api_token=SecretStr(TOKEN), clock=Clock())
    assert isinstance(stack, ClockedStack)
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        stack.clock.advance(SESSION_S - 1)
        assert (await client.get("/")).status_code == 200
        stack.clock.advance(1)
        assert (await client.get("/")).status_code == 303


def test_a_new_token_or_secret_voids_old_sessions() -> None:
    """A cookie signed under one token (or secret key) does not read under another."""
    first = DashboardAuth(secret=b"k" * 32, token="one")
    _session, cookie = first.mint(1000.0)
    assert first.read(cookie, 1001.0) is not None
    assert DashboardAuth(secret=b"k" * 32, token="two").read(cookie, 1001.0) is None
    assert DashboardAuth(secret=b"j" * 32, token="one").read(cookie, 1001.0) is None
    assert DashboardAuth(secret=b"k" * 32, token=None).read(cookie, 1001.0) is None
    assert "k" * 8 not in repr(first) and "one" not in repr(first)


@pytest.mark.parametrize(
    "given",
    [None, "", "0" * 64, "not-hex"],
    ids=["missing", "empty", "wrong", "garbage"],
)
async def test_a_form_without_the_right_csrf_token_is_refused(stack: Stack, given: str | None) -> None:
    """A POST whose `csrf` field is missing or wrong gets 403 and changes nothing (the session stays)."""
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        response = await post_form(client, "/logout", csrf=given)
        assert response.status_code == 403
        assert "set-cookie" not in response.headers
        assert (await client.get("/")).status_code == 200


async def test_csrf_tokens_belong_to_their_session(stack: Stack) -> None:
    """The CSRF token of one session is refused with another session's cookie."""
    async with browser(stack.url) as first, browser(stack.url) as second:
        await log_in(first, TOKEN)
        await log_in(second, TOKEN)
        first_csrf = csrf_of(await first.get("/"))
        assert (await post_form(second, "/logout", csrf=first_csrf)).status_code == 403
        assert (await post_form(first, "/logout", csrf=first_csrf)).status_code == 303


async def test_logout_clears_the_cookie(stack: Stack) -> None:
    """Log out (with the page's CSRF token) clears the session cookie and goes to the login page."""
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        page = await client.get("/")
        assert 'action="/logout"' in page.text
        response = await post_form(client, "/logout", csrf=csrf_of(page))
        assert response.status_code == 303 and response.headers["location"] == "/login"
        assert "max-age=0" in set_cookie_header(response).lower()
        assert COOKIE not in client.cookies
        assert (await client.get("/")).status_code == 303


async def test_a_form_without_a_session_goes_to_login(stack: Stack) -> None:
    """A form posted without a session answers 303 to /login and does nothing."""
    async with browser(stack.url) as client:
        response = await post_form(client, "/logout", csrf="0" * 64)
        assert response.status_code == 303 and response.headers["location"] == "/login"


NEXT = [
    ("//evil.example/", "/"),
    ("https://evil.example/", "/"),
    ("/\\evil.example", "/"),
    ("\\/evil.example", "/"),
    ("javascript:alert(1)", "/"),
    ("evil.example", "/"),
    ("/\tx", "/"),
    ("/\r\nSet-Cookie: x=1", "/"),
    ("/%0d%0aSet-Cookie:x=1", "/%0d%0aSet-Cookie:x=1"),  # encoded: a path, not a header
    ("/jobs/job_X?status=failed", "/jobs/job_X?status=failed"),
]


@pytest.mark.parametrize(("next_path", "expected"), NEXT, ids=[given for given, _ in NEXT])
async def test_next_never_leaves_the_site(stack: Stack, next_path: str, expected: str) -> None:
    """After login, `next` is followed only to a local path; anything else goes to `/`."""
    async with browser(stack.url) as client:
        page = await client.get("/login", params={"next": next_path})
        if next_path.isprintable():  # else refused by the request hygiene before routing (400)
            assert page.status_code == 200
            assert re.findall(r'name="next" value="([^"]*)"', page.text) == [expected]
        response = await log_in(client, TOKEN, next_path=next_path)
        assert response.headers["location"] == expected


async def test_signed_in_login_page_goes_straight_to_next(stack: Stack) -> None:
    """GET /login with a session answers 303 to a local `next`, or `/` for an offsite one."""
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        assert (await client.get("/login", params={"next": "/deliveries"})).headers["location"] == "/deliveries"
        assert (await client.get("/login", params={"next": "//evil.example"})).headers["location"] == "/"


async def test_failed_logins_are_capped(stack: Stack) -> None:
    """After ten failed logins a process refuses every login for a while, the right token included: the
    answer (429, Retry-After) says nothing about the token."""
    async with browser(stack.url) as client:
        for _ in range(10):
            assert (await client.post("/login", data={"token": "guess"})).status_code == 401
        refused = await client.post("/login", data={"token": TOKEN})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert COOKIE not in client.cookies


async def test_a_cross_site_login_or_form_is_refused(stack: Stack) -> None:
    """A POST a browser marks as cross-site never reaches the login or a form."""
    async with browser(stack.url) as client:
        for path in ["/login", "/logout"]:
            response = await client.post(
                path, data={"token": TOKEN}, headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
            )
            assert_error_shape(response, 403, "cross_site_request")
        assert COOKIE not in client.cookies


async def test_the_session_does_not_open_the_api(stack: Stack) -> None:
    """`/v1` stays bearer-token only: a dashboard session cookie does not open it."""
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        assert_error_shape(await client.get("/v1/jobs"), 401, "unauthorized")


async def test_pages_carry_security_headers(stack: Stack) -> None:
    """Pages are not cached, not framed and load scripts and styles from this server only."""
    async with browser(stack.url) as client:
        page = await client.get("/login")
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-frame-options"] == "DENY"
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["content-type"].startswith("text/html")


async def test_open_dashboard_without_a_token(make_stack: StackFactory) -> None:
    """Without RECEIVER_API_TOKEN (loopback only) pages open without login and a session cookie still ties
    the forms' CSRF token; there is nothing to log out of."""
    stack = await make_stack(workers=False)
    async with browser(stack.url) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert '<table id="jobs"' in page.text
        assert 'action="/logout"' not in page.text
        assert "httponly" in set_cookie_header(page).lower()
        assert "set-cookie" not in (await client.get("/")).headers  # the session is kept
        assert (await client.get("/login")).headers["location"] == "/"
        assert (await client.post("/login", data={"token": "anything"})).headers["location"] == "/"
        assert (await post_form(client, "/logout", csrf="0" * 64)).status_code == 403


@pytest.mark.parametrize("name", sorted(ASSETS))
async def test_static_files_are_served_with_cache_headers(stack: Stack, name: str) -> None:
    """The dashboard's CSS and JS need no session; the versioned URL is cacheable forever, others revalidate."""
    async with httpx.AsyncClient(base_url=stack.url) as client:
        version = ASSETS[name].version
        pinned = await client.get(f"/ui/static/{name}", params={"v": version})
        assert pinned.status_code == 200
        assert pinned.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert pinned.content == ASSETS[name].body
        plain = await client.get(f"/ui/static/{name}")
        assert plain.headers["cache-control"] == "no-cache"
        again = await client.get(f"/ui/static/{name}", headers={"If-None-Match": plain.headers["etag"]})
        assert again.status_code == 304
        assert (await client.get("/ui/static/nope.css")).status_code == 404
        login = await client.get("/login")
        assert f"/ui/static/{name}?v={version}" in login.text
