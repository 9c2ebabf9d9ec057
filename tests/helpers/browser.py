"""The dashboard in a real browser: Debian's Chromium (launched as bench/screenshots.py does) driven by
Playwright's async API; a page on a fresh browser context per use, logging in through the form, the script
errors a page raised, and probes for keyboard focus and horizontal overflow. Waits are Playwright's own
(auto-waiting locators, `expect`, `wait_for_function`), bounded by TIMEOUT_MS only to end a hang."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Locator, Page, expect

from bench.screenshots import chromium

__all__ = ["DESKTOP", "PHONE", "TIMEOUT_MS", "Tab", "chromium", "open_tab"]

TIMEOUT_MS = 30_000  # bounds a broken run only: the machine is loaded, nothing here relies on how long things take
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}

expect.set_options(timeout=TIMEOUT_MS)

# Both images of the job page decoded: the browser fetched real image bytes it could draw.
IMAGES_DRAWN = """() => ["input-image", "output-image"].every((id) => {
    const img = document.getElementById(id);
    return img !== null && img.complete && img.naturalWidth > 0;
})"""


@dataclass
class Tab:
    """A page of its own browser context (own cookies) on the receiver at `url`; `errors` collects every
    uncaught script error the page raised."""

    page: Page
    url: str
    errors: list[str] = field(default_factory=list)

    async def goto(self, path: str) -> None:
        response = await self.page.goto(path, wait_until="load")
        assert response is not None and response.ok, (path, response and response.status)

    async def log_in(self, token: str, *, landing: str = "/") -> None:
        """Log in through `<form id="login">` as a person would and land on `landing`."""
        await self.goto("/login")
        form = self.page.locator("form#login")
        await form.locator('input[name="token"]').fill(token)
        await form.get_by_role("button", name="Log in").click()
        await expect(self.page).to_have_url(self.url + landing)

    async def screenshot(self, path: Path) -> None:
        assert await self.page.screenshot(path=path, full_page=True)  # the PNG's bytes, also written to `path`

    async def script_value(self, expression: str) -> Any:
        return await self.page.evaluate(expression)

    async def tab_to(self, target: Locator, *, presses: int = 80) -> list[str]:
        """Reload the page, then press Tab from its top until `target` has the keyboard focus; what took the
        focus on the way (tag and accessible text). Fails when `presses` Tabs never reach it."""
        await self.page.reload(wait_until="load")  # focus navigation starts over from the top
        seen = []
        for _ in range(presses):
            await self.page.keyboard.press("Tab")
            seen.append(await self.page.evaluate(FOCUSED))
            if await target.evaluate("(el) => el === document.activeElement"):
                return seen
        raise AssertionError(f"{presses} Tabs never reached {target}; focus went to {seen}")

    async def overflow(self, selector: str) -> dict[str, Any]:
        """How the page and the element `selector` (with its nearest `.table-wrap`) fit the viewport's width."""
        sizes: dict[str, Any] = await self.page.evaluate(OVERFLOW, selector)
        return sizes


FOCUSED = """() => {
    const el = document.activeElement;
    if (!el) return "";
    const name = el.getAttribute("aria-label") || el.textContent || el.getAttribute("name") || "";
    return el.tagName.toLowerCase() + ":" + name.trim().replace(/\\s+/g, " ").slice(0, 40);
}"""

OVERFLOW = """(selector) => {
    const root = document.documentElement;
    const el = document.querySelector(selector);
    const wrap = el && el.closest(".table-wrap");
    return {
        viewport: window.innerWidth,
        page_scroll_width: root.scrollWidth,
        element_width: el ? el.getBoundingClientRect().width : null,
        wrap_client_width: wrap ? wrap.clientWidth : null,
        wrap_scroll_width: wrap ? wrap.scrollWidth : null,
        wrap_overflow_x: wrap ? getComputedStyle(wrap).overflowX : null,
    };
}"""


async def open_tab(browser: Browser, url: str, *, viewport: dict[str, int] = DESKTOP) -> Tab:
    """A new context (no cookies yet) and a page in it, every wait bounded by TIMEOUT_MS."""
    context = await browser.new_context(base_url=url, viewport=viewport)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    page = await context.new_page()
    tab = Tab(page, url)
    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    return tab


def path_pattern(path: str) -> re.Pattern[str]:
    """A URL pattern for `expect(page).to_have_url`: `path` on any host, with any query."""
    return re.compile(r"^https?://[^/]+" + re.escape(path) + r"(\?.*)?$")
