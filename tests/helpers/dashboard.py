"""Driving the dashboard as a browser would over real HTTP: log in, read a page's CSRF token, post its forms."""

from __future__ import annotations

import re
from typing import Any

import httpx

from receiver.dashboard.sessions import COOKIE

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def csrf_of(page: httpx.Response) -> str:
    """The CSRF token of the first form on a dashboard page."""
    match = _CSRF.search(page.text)
    assert match is not None, page.text[:2000]
    return match.group(1)


def browser(url: str) -> httpx.AsyncClient:
    """A client that keeps cookies and does not follow redirects (tests look at each 303)."""
    return httpx.AsyncClient(base_url=url, timeout=10, follow_redirects=False)


async def log_in(client: httpx.AsyncClient, token: str, *, next_path: str = "/") -> httpx.Response:
    """POST /login with the token; asserts the 303 and that the session cookie came with it."""
    response = await client.post("/login", data={"token": token, "next": next_path})
    assert response.status_code == 303, response.text[:1000]
    assert COOKIE in client.cookies
    return response


async def post_form(client: httpx.AsyncClient, path: str, *, csrf: str | None, **fields: Any) -> httpx.Response:
    """A dashboard form POST (urlencoded), with `csrf` unless it is None."""
    data = {**fields, **({"csrf": csrf} if csrf is not None else {})}
    return await client.post(path, data=data)


def set_cookie_header(response: httpx.Response) -> str:
    """The `Set-Cookie` header that sets the session cookie."""
    headers = [value for value in response.headers.get_list("set-cookie") if value.startswith(f"{COOKIE}=")]
    assert len(headers) == 1, response.headers
    return headers[0]
