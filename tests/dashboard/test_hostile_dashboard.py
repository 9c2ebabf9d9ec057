"""The dashboard and /metrics as a hostile client sees them, over real HTTP: what a review found and fixed
(a page size past the cap, a logged-out cookie that still opened pages, worker metrics open beyond loopback),
and the probes that found nothing, kept so it stays that way."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from receiver.app import create_app
from receiver.dashboard.job_filters import MAX_PAGE_SIZE
from receiver.dashboard.sessions import COOKIE
from receiver.web.asgi_server import running_server
from receiver.web.routes.metrics import metrics_app
from tests.helpers.dashboard import browser, csrf_of, log_in, post_form
from tests.helpers.http import assert_error_shape
from tests.helpers.stack import Stack, StackFactory, make_settings
from tests.helpers.streams import read_until

TOKEN = "dashboard-token-for-tests"
EVERY_ADDRESS = "0.0.0.0"  # noqa: S104 (validated only: nothing is bound)
A_JOB_ID = "job_" + "0" * 26


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack(workers=False, api_token=SecretStr(TOKEN))


@pytest.mark.parametrize("limit", ["0200000", "0001000000", "00000000000000000050"])
async def test_the_page_size_cap_holds_with_leading_zeros(stack: Stack, limit: str) -> None:
    """`limit=0200000` once passed the cap (only its first four digits were checked) and asked the database
    for 200000 rows: now any limit past MAX_PAGE_SIZE, however written, is left out and named."""
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        # With a cursor the page links its first page, carrying the limit it used.
        page = await client.get("/", params={"limit": limit, "cursor": A_JOB_ID})
        assert page.status_code == 200
        assert f"limit: a page size from 1 to {MAX_PAGE_SIZE}" in page.text
        assert 'href="/">Newest</a>' in page.text  # the default page size: no limit in the link
        assert "limit=" not in page.text


async def test_a_cookie_copied_before_logout_opens_nothing_after(stack: Stack) -> None:
    """Logging out revokes the session, not just the browser's copy of its cookie: a copy taken before (a
    stolen cookie, another tab's jar) opens no page, no form and no live feed afterwards."""
    async with browser(stack.url) as client, browser(stack.url) as thief:
        await log_in(client, TOKEN)
        page = await client.get("/")
        thief.cookies.set(COOKIE, client.cookies[COOKIE])
        assert (await thief.get("/")).status_code == 200  # the copy works while the session lives
        assert (await post_form(client, "/logout", csrf=csrf_of(page))).status_code == 303
        assert (await thief.get("/")).status_code == 303
        assert (await thief.get("/deliveries")).status_code == 303
        assert_error_shape(await thief.get("/ui/stream"), 401, "unauthorized")
        assert (await post_form(thief, "/logout", csrf=csrf_of(page))).headers["location"] == "/login"
        # A new login is a new session, unaffected.
        thief.cookies.clear()
        await log_in(thief, TOKEN)
        assert (await thief.get("/")).status_code == 200


async def test_a_logout_holds_in_every_web_process(stack: Stack) -> None:
    """Two web processes on one database (here two apps over the same services, each with its own sessions
    and memory): a session logged out on one is refused by the other, which never saw the logout."""
    other_app = create_app(stack.services)
    async with running_server(other_app) as other_url, browser(stack.url) as client, browser(other_url) as thief:
        await log_in(client, TOKEN)
        page = await client.get("/")
        thief.cookies.set(COOKIE, client.cookies[COOKIE])
        assert (await thief.get("/")).status_code == 200  # the session opens pages on both
        assert (await post_form(client, "/logout", csrf=csrf_of(page))).status_code == 303
        assert (await thief.get("/")).status_code == 303
        assert_error_shape(await thief.get("/ui/stream"), 401, "unauthorized")
        assert (await post_form(thief, "/jobs/job_x/cancel", csrf=csrf_of(page))).headers["location"] == "/login"


def test_worker_metrics_beyond_loopback_need_a_token(tmp_path: Path) -> None:
    """`serve` refuses a web port beyond loopback without a token; a worker's metrics port beyond loopback
    without one would serve /metrics to the network, so such settings are refused unless the metrics are
    declared public."""
    with pytest.raises(ValidationError, match="RECEIVER_WORKER_METRICS_HOST"):
        make_settings(tmp_path, worker_metrics_port=9109, worker_metrics_host=EVERY_ADDRESS)
    make_settings(tmp_path, worker_metrics_port=9109, worker_metrics_host=EVERY_ADDRESS, metrics_public=True)
    make_settings(tmp_path, worker_metrics_port=9109, worker_metrics_host=EVERY_ADDRESS, api_token=SecretStr(TOKEN))
    make_settings(tmp_path, worker_metrics_port=9109, worker_metrics_host="::1")
    make_settings(tmp_path, worker_metrics_port=9109, worker_metrics_host="localhost")
    make_settings(tmp_path, worker_metrics_host=EVERY_ADDRESS)  # no port: nothing is served


async def test_worker_metrics_check_the_host_like_the_web_app(make_stack: StackFactory) -> None:
    """A worker's metrics listener refuses a `Host` that is none of ours (DNS rebinding: another site's name
    pointed at 127.0.0.1 would read a token-less worker's metrics from that site's page), as the web app does."""
    stack = await make_stack(workers=False)
    async with (
        running_server(metrics_app(stack.services)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        assert (await client.get("/metrics")).status_code == 200
        rebound = await client.get("/metrics", headers={"Host": "evil.example"})
        assert_error_shape(rebound, 400, "bad_host")


@pytest.mark.parametrize("since", ["0001-01-01T00:00+23:59", "9999-12-31T23:59-23:59"])
async def test_a_time_filter_past_the_calendar_is_named_not_a_500(stack: Stack, since: str) -> None:
    """A `since` (or `until`) that parses but lies outside the years a page can write back (year 0, 10000)
    is left out and named on the page; it answered 500 before."""
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        for name in ["since", "until"]:
            page = await client.get("/", params={name: since})
            assert page.status_code == 200, page.text[:500]
            assert f"Left out {name}: a date and time" in page.text


# --- probes that found nothing ---------------------------------------------------------------------------


async def test_metrics_take_the_bearer_token_not_the_dashboard_cookie(stack: Stack) -> None:
    """A dashboard session does not open /metrics: a scraper holds the token, a browser tab is not a scraper."""
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        assert_error_shape(await client.get("/metrics"), 401, "unauthorized")
        scraped = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert scraped.status_code == 200
        assert TOKEN not in scraped.text


async def test_hostile_urls_are_escaped_and_not_followed(stack: Stack) -> None:
    """A job id or `next` carrying markup is shown as text; `next` variants never leave the site; no GET does
    what a form does."""
    async with browser(stack.url) as client:
        hostile = '"><script>alert(1)</script>'
        login = await client.get("/login", params={"next": "/" + hostile})
        assert "<script>alert" not in login.text and "&lt;script&gt;" in login.text
        for next_path in ["//evil.example", "/%2F/evil.example", "/\\evil.example", "https:evil.example", "/\\/x"]:
            response = await client.post("/login", data={"token": TOKEN, "next": next_path})
            location = response.headers["location"]
            assert location == "/" or (location.startswith("/") and not location.startswith("//")), location
            assert "\\" not in location
        page = await client.get("/jobs/" + '"><img src=x onerror=alert(1)>')
        assert page.status_code == 404
        assert "<img src=x" not in page.text and "&lt;img src=x" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        for path in ["/logout", "/subscriptions/sub_x/delete", "/jobs/" + A_JOB_ID + "/cancel"]:
            assert (await client.get(path)).status_code == 405, path


async def test_a_cross_site_form_is_refused_even_with_the_right_csrf(stack: Stack) -> None:
    """The right cookie and CSRF token are not enough from another site's page (`Origin`, `Sec-Fetch-Site`)."""
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        csrf = csrf_of(await client.get("/"))
        for headers in [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}]:
            response = await client.post("/logout", data={"csrf": csrf}, headers=headers)
            assert_error_shape(response, 403, "cross_site_request")
        assert (await client.get("/")).status_code == 200


async def test_a_huge_form_or_search_is_refused_cheaply(stack: Stack) -> None:
    """A form body past the dashboard's cap answers 413 without reading it all; a search past MAX_TEXT is
    left out (no LIKE scan over a megabyte pattern)."""
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        csrf = csrf_of(await client.get("/"))
        big = await client.post("/logout", data={"csrf": csrf, "pad": "x" * (1 << 20)})
        assert big.status_code == 413
        page = await client.get("/", params={"q": "%" * 5000})
        assert page.status_code == 200 and "q: at most" in page.text


async def test_login_needs_no_script_and_the_page_allows_none_inline(stack: Stack) -> None:
    """The login page (every page) carries a policy that runs no inline script and cannot be framed."""
    async with httpx.AsyncClient(base_url=stack.url) as client:
        page = await client.get("/login")
        policy = page.headers["content-security-policy"]
        assert "'unsafe-inline'" not in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "same-origin"
        assert "<script>" not in page.text  # only `<script src=...>`


async def test_the_live_feed_shares_the_stream_slots(make_stack: StackFactory) -> None:
    """`/ui/stream` holds one of the RECEIVER_STREAM_MAX_CLIENTS slots: past them a session gets 503, so
    dashboard tabs cannot hold an unbounded number of connections; another site's page gets none at all."""
    stack = await make_stack(workers=False, api_token=SecretStr(TOKEN), stream_max_clients=1)
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        cross = await client.get("/ui/stream", headers={"Sec-Fetch-Site": "cross-site"})
        assert_error_shape(cross, 403, "cross_site_request")
        async with client.stream("GET", "/ui/stream") as first:
            assert first.status_code == 200
            await read_until(first.aiter_lines(), "retry:")
            async with client.stream("GET", "/ui/stream") as second:  # a 200 here would stream on: look first
                assert second.status_code == 503, (second.status_code, second.headers)
                await second.aread()
                assert_error_shape(second, 503, "too_many_streams")
