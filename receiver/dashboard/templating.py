"""The dashboard's Jinja2 environment (autoescape on for every template) and `render`, which answers a page.

Provider text (prompts, errors, payloads) reaches templates as data and is escaped like everything else:
no template applies `|safe` to data, and only `csrf_field` builds markup in Python.

A page handler: `session = await auth.page_session(request)` (return it when it is a Response), then
`render(request, "page.html", {"nav": "deliveries", ...})`. A page template extends `base.html` and fills
`{% block title %}` and `{% block content %}`; `nav` marks the current menu entry (`jobs`, `deliveries`,
`subscriptions`); a context holding a truthy `health` includes `_health.html` above the content. A form
handler: `checked = await auth.check_form(request)`, then answers 303 back to its page with `?done=<code>`,
one of FLASH's codes. Filters: `when` (UTC time), `duration` and `age` (seconds for people).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from receiver.dashboard.assets import static_url
from receiver.dashboard.sessions import csrf_field, remember_session

# Every page: no framing, no inline script, no assets from elsewhere. Images may come from a presigned
# blob-store URL (RECEIVER_BLOB_REDIRECT), so they alone may load from any origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src * data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",  # pages show live state and carry CSRF tokens
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
# What `?done=<code>` after a form says (a fixed list: a link cannot make the dashboard say anything else).
FLASH = {
    "cancelled": "The job was cancelled.",
    "resent": "The job's notifications were queued again.",
    "nothing_to_resend": "The job has no final event to resend yet.",
    "retried": "The delivery was queued again.",
    "replayed": "The deliveries were queued again.",
    "created": "The subscription was created.",
    "tested": "A test event was sent.",
    "rotated": "The subscription's secret was rotated.",
    "deleted": "The subscription was removed.",
}


def when(value: datetime | float | None) -> str:
    """A UTC time as `2026-11-30 14:05:09` ('' for None)."""
    if value is None:
        return ""
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    """A span of time for people: `850 ms`, `4.2 s`, `3 min 5 s`, `2 h 10 min` ('' for None)."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def age(seconds: float | None) -> str:
    """How long ago, to the second: `just now`, `42 s`, `3 min 5 s`, ..."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    return "just now" if seconds < 1 else duration(float(int(seconds)))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("receiver.dashboard", "templates"),
        autoescape=True,  # every template, whatever its name
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.globals.update(static_url=static_url, csrf_field=csrf_field)
    env.filters.update(when=when, duration=duration, age=age)
    return env


ENVIRONMENT = _environment()


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """The page `name` rendered with `context` (plus `request`, the request's `session`, the `flash` of a
    `?done=` code), with the dashboard's security headers, and the cookie of a session minted just now."""
    values = {
        "request": request,
        "session": getattr(request.state, "dashboard_session", None),
        "flash": FLASH.get(request.query_params.get("done", "")),
        **context,
    }
    html = ENVIRONMENT.get_template(name).render(values)
    response = HTMLResponse(html, status_code=status_code, headers={**PAGE_HEADERS, **(headers or {})})
    remember_session(request, response)
    return response


def render_error(request: Request, status_code: int, message: str) -> Response:
    """A page saying what went wrong (a refused form, a job that does not exist)."""
    return render(request, "error.html", {"status": status_code, "message": message}, status_code=status_code)
