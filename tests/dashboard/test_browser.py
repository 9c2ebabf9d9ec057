"""The dashboard in a real browser (Debian's Chromium through Playwright) against a receiver on loopback with a
real SQLite file and the API token set, beside the providers' emulators: logging in, the jobs list following
the live feed, the job page's images, retrying a delivery that died for real, provider text that stays text,
a 360 px wide screen and the keyboard. Each test saves screenshots of the pages it saw to its tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect
from pydantic import SecretStr

from receiver.dashboard.sessions import COOKIE
from tests.helpers.browser import IMAGES_DRAWN, PHONE, Tab, chromium, open_tab, path_pattern
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.receivers import HookReceiver
from tests.helpers.stack import STEPX, Stack, StackFactory, subscribe
from tests.helpers.waiting import until

TOKEN = "dashboard-token-for-the-browser"
TINY = {"notify_retry_scale": 0.000001}  # the day-long retry schedule in about 0.1 s (below the setting's floor)
SCRIPT = "<script>window.__pwned=1</script>"
NAV = ("Jobs", "Deliveries", "Subscriptions")


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    """The receiver with the API token set (its own client sends it) and a quick retry schedule."""
    stack = await make_stack(api_token=SecretStr(TOKEN), unchecked=TINY)
    stack.client.headers["Authorization"] = f"Bearer {TOKEN}"
    return stack


@pytest.fixture
async def browser(stack: Stack) -> AsyncIterator[Browser]:
    """Chromium for this test (closed before the stack it looks at: no live feed outlives the test)."""
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def tab(browser: Browser, stack: Stack) -> AsyncIterator[Tab]:
    """A logged-out page on the stack's receiver; the test fails on any script error the page raised."""
    opened = await open_tab(browser, stack.url)
    yield opened
    assert opened.errors == []


async def create(stack: Stack, prompt: str = "make it red") -> str:
    """A fal job through the API (bearer token); its id."""
    job = await stack.create("fal", STEPX, {"prompt": prompt, "image_url": SMALL_PNG_URI})
    job_id: str = job["id"]
    return job_id


async def deliveries(stack: Stack, **params: str) -> list[dict[str, Any]]:
    response = await stack.client.get("/v1/deliveries", params=params)
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["deliveries"]
    return listed


async def dead_delivery(stack: Stack, hook: HookReceiver) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """A subscription to `hook`, which answers 500 until told otherwise, and a job whose delivery to it went
    through the whole retry schedule: dead, for real. The subscription, the job's id and the dead delivery."""
    hook.default_status = 500
    sub = await subscribe(stack, {"kind": "webhook", "url": hook.url, "events": ["job.succeeded"]})
    job_id = await create(stack)
    await stack.wait_final(job_id)

    async def dead() -> bool:
        return bool(await deliveries(stack, job_id=job_id, status="dead"))

    await until(dead, what="the delivery dead")
    [delivery] = await deliveries(stack, job_id=job_id)
    return sub, job_id, delivery


async def test_log_in_with_the_token_and_not_without_it(tab: Tab, tmp_path: Path) -> None:
    """The jobs list sends a visitor to the login form; a wrong token shows an error and sets no session; the
    right one lands on the jobs list, and the session cookie is HttpOnly and SameSite=Strict."""
    await tab.goto("/")
    await expect(tab.page).to_have_url(path_pattern("/login"))
    form = tab.page.locator("form#login")
    await expect(form).to_be_visible()
    await tab.screenshot(tmp_path / "login.png")

    await form.locator('input[name="token"]').fill("not-the-token")
    await form.get_by_role("button", name="Log in").click()
    await expect(tab.page.locator("form#login [role=alert]")).to_have_text("That is not the API token.")
    assert [cookie for cookie in await tab.page.context.cookies() if cookie["name"] == COOKIE] == []
    await tab.goto("/")
    await expect(tab.page).to_have_url(path_pattern("/login"))  # still nobody

    await tab.log_in(TOKEN)
    await expect(tab.page.locator("table#jobs")).to_be_visible()
    await expect(tab.page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    [session] = [cookie for cookie in await tab.page.context.cookies() if cookie["name"] == COOKIE]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert await tab.script_value("document.cookie") == ""  # scripts cannot read it


async def test_a_new_job_appears_and_finishes_without_a_reload(stack: Stack, tab: Tab, tmp_path: Path) -> None:
    """With the jobs list open, a job created through the API shows up as a row and its status turns succeeded,
    from the live feed alone (the page is never reloaded)."""
    await tab.log_in(TOKEN)
    await expect(tab.page.locator("#live-state")).to_contain_text("Live")  # the feed is connected
    await tab.page.evaluate("() => { window.__sameDocument = true; }")
    job_id = await create(stack, "a row that arrives live")
    row = tab.page.locator(f'table#jobs tr[data-job-id="{job_id}"]')
    await expect(row).to_be_visible()
    await expect(row).to_have_attribute("data-status", "succeeded")
    await expect(row.locator(".prompt")).to_have_text("a row that arrives live")
    await expect(row.locator(".status")).to_have_text("succeeded")
    assert await tab.script_value("window.__sameDocument") is True  # no reload happened
    await stack.wait_for(job_id, lambda job: job["images_status"] == "stored")
    await expect(row.locator("img.thumb")).to_have_count(2)  # the stored input and output, live too
    await tab.screenshot(tmp_path / "jobs.png")


async def test_the_job_page_shows_both_images(stack: Stack, tab: Tab, tmp_path: Path) -> None:
    """A job page opened while the job waits follows it to the end and then draws the stored input and output
    (real image bytes the browser decoded), each linked to its full size, with the timeline and raw payload."""
    await tab.log_in(TOKEN)
    assert stack.recorder is not None
    stack.recorder.gate.clear()  # the submit to the emulator waits: the job is not done when the page opens
    job_id = await create(stack, "both images")
    await tab.goto(f"/jobs/{job_id}")
    await expect(tab.page.locator("#output-image")).to_have_count(0)
    stack.recorder.gate.set()
    await expect(tab.page.locator("#job-status")).to_have_text("succeeded")
    await expect(tab.page.locator("#output-image")).to_be_visible()
    await tab.page.wait_for_function(IMAGES_DRAWN)
    for image in ("#input-image", "#output-image"):
        assert await tab.page.locator(image).evaluate("(img) => img.naturalWidth") > 0
        full_size = tab.page.locator(f"a:has(> {image})")
        src = await tab.page.locator(image).get_attribute("src")
        assert src and await full_size.get_attribute("href") == src
        response = await tab.page.request.get(src)  # the session's cookie, no bearer token
        assert response.ok and response.headers["content-type"].startswith("image/")
    await expect(tab.page.locator("section#timeline li")).not_to_have_count(0)
    await tab.page.locator("details#raw-payload summary").click()
    await expect(tab.page.locator("details#raw-payload pre").first).to_be_visible()
    await tab.screenshot(tmp_path / "job.png")


async def test_a_dead_delivery_is_retried_with_its_button(
    stack: Stack, tab: Tab, hook: HookReceiver, tmp_path: Path
) -> None:
    """A delivery dead for real (its target answered 500 through the whole schedule) is listed with a Retry
    button; once the target answers 200, pressing Retry delivers it (same webhook-id): the row leaves the list
    of failing and dead deliveries and the job's timeline shows the delivered attempt."""
    sub, job_id, delivery = await dead_delivery(stack, hook)
    attempts = len(hook.hooks)
    await tab.log_in(TOKEN)
    await tab.goto("/deliveries")
    row = tab.page.locator(f'table#deliveries tr[data-delivery-id="{delivery["id"]}"]')
    await expect(row).to_have_attribute("data-status", "dead")
    await expect(row.locator(".error-text")).to_contain_text("HTTP 500")
    await tab.screenshot(tmp_path / "deliveries.png")

    hook.default_status = 200
    await row.get_by_role("button", name="Retry").click()
    await expect(tab.page).to_have_url(path_pattern("/deliveries"))
    await expect(tab.page.locator(".flash")).to_be_visible()

    async def delivered() -> bool:
        await tab.goto("/deliveries")
        return await row.count() == 0

    await until(delivered, what="the retried delivery gone from the failing and dead list")
    assert [item["status"] for item in await deliveries(stack, job_id=job_id)] == ["delivered"]
    assert len(hook.hooks) == attempts + 1
    assert hook.hooks[-1].headers["webhook-id"] == delivery["webhook_id"]
    await tab.goto(f"/jobs/{job_id}")
    good = tab.page.locator("section#timeline li.step-ok", has_text=f"Delivery to {sub['id']}")
    await expect(good).to_contain_text("HTTP 200")
    await tab.goto("/subscriptions")
    await expect(tab.page.locator(f'table#subscriptions tr[data-subscription-id="{sub["id"]}"]')).to_contain_text(
        "0 / 0"  # neither failing nor dead any more
    )


async def test_a_script_in_a_prompt_stays_text(stack: Stack, tab: Tab, tmp_path: Path) -> None:
    """A prompt holding a script tag shows literally on the jobs list (row added live, and rendered by the
    server after a reload) and on the job page, and never runs."""
    await tab.log_in(TOKEN)
    await expect(tab.page.locator("#live-state")).to_contain_text("Live")
    job_id = await create(stack, f"make it red {SCRIPT}")
    prompt = tab.page.locator(f'table#jobs tr[data-job-id="{job_id}"] .prompt')
    await expect(prompt).to_have_text(f"make it red {SCRIPT}")  # inserted by the live feed
    await stack.wait_final(job_id)
    await tab.page.reload(wait_until="load")
    await expect(prompt).to_have_text(f"make it red {SCRIPT}")  # rendered by the server
    await expect(prompt.locator("script")).to_have_count(0)
    assert await tab.script_value("typeof window.__pwned") == "undefined"
    page = await tab.page.goto(f"/jobs/{job_id}", wait_until="load")
    assert page is not None and "script-src 'self'" in page.headers["content-security-policy"]  # a second wall
    await expect(tab.page.locator("dd.prompt")).to_have_text(f"make it red {SCRIPT}")
    await expect(tab.page.locator("main script")).to_have_count(0)
    assert await tab.script_value("typeof window.__pwned") == "undefined"
    await tab.screenshot(tmp_path / "job-with-script-prompt.png")


async def test_phone_width_and_keyboard(
    stack: Stack, browser: Browser, tab: Tab, hook: HookReceiver, tmp_path: Path
) -> None:
    """At 360 px wide no page scrolls sideways: the jobs and deliveries tables turn into one card per row and
    fit (so a dead delivery's Retry is on screen without a sideways scroll), the wider tables scroll inside
    their own `.table-wrap` box. Tab reaches every nav link, and the Retry button of a
    dead delivery; Enter on it retries."""
    _, job_id, delivery = await dead_delivery(stack, hook)
    await stack.wait_for(job_id, lambda job: job["images_status"] == "stored")
    phone = await open_tab(browser, stack.url, viewport=PHONE)
    await phone.log_in(TOKEN)
    pages = {
        "/": "table#jobs",
        f"/jobs/{job_id}": "section#timeline",
        "/deliveries": "table#deliveries",
        "/subscriptions": "table#subscriptions",
    }
    for path, main_part in pages.items():
        await phone.goto(path)
        await expect(phone.page.locator(main_part)).to_be_visible()
        sizes = await phone.overflow(main_part)
        assert sizes["viewport"] == PHONE["width"]
        assert sizes["page_scroll_width"] <= sizes["viewport"], (path, sizes)  # the page never scrolls sideways
        if sizes["wrap_client_width"] is not None:
            assert sizes["wrap_client_width"] <= sizes["viewport"], (path, sizes)
            fits = sizes["wrap_scroll_width"] <= sizes["wrap_client_width"]
            assert fits or sizes["wrap_overflow_x"] in ("auto", "scroll"), (path, sizes)
        if path in ("/", "/deliveries"):
            assert sizes["wrap_scroll_width"] <= sizes["wrap_client_width"], sizes  # the cards fit, no scrolling
        name = "job" if path.startswith("/jobs/") else path.strip("/") or "jobs"
        await phone.screenshot(tmp_path / f"phone-{name}.png")
    await phone.goto("/login")  # logged in: the login form still fits
    assert (await phone.overflow("form#login"))["page_scroll_width"] <= PHONE["width"]
    assert phone.errors == []

    await tab.log_in(TOKEN)
    await tab.goto("/subscriptions")
    await tab.screenshot(tmp_path / "subscriptions.png")
    await tab.goto("/deliveries")
    nav = tab.page.get_by_role("navigation", name="Main")
    for link in NAV:
        focused = await tab.tab_to(nav.get_by_role("link", name=link, exact=True))
        assert focused[0].startswith("a:Skip to content")  # the first stop skips the nav
    retry = tab.page.locator(f'tr[data-delivery-id="{delivery["id"]}"]').get_by_role("button", name="Retry")
    await tab.tab_to(retry)
    await expect(retry).to_be_focused()
    hook.default_status = 200
    await tab.page.keyboard.press("Enter")
    await expect(tab.page).to_have_url(path_pattern("/deliveries"))
    await expect(tab.page.locator(".flash")).to_be_visible()

    async def delivered() -> bool:
        return [item["status"] for item in await deliveries(stack, job_id=job_id)] == ["delivered"]

    await until(delivered, what="the delivery retried from the keyboard delivered")
