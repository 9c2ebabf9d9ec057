"""The dashboard's operator pages: failing and dead deliveries (retry, bulk replay) and subscriptions with their
health (add, test, rotate secret, remove), each page with the health strip.

Every action goes through the services behind `/v1/deliveries` and `/v1/subscriptions` (`Subscriptions.retry`,
`.replay`, `.create`, `.rotate_secret`, `.delete`, `probe.send_test`). A new or rotated signing secret is shown
once, on the page that answers the form (never in a URL, never again).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData, QueryParams
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.dashboard import auth
from receiver.dashboard.health import build_health
from receiver.dashboard.templating import render, render_error
from receiver.errors import InputError, NotFoundError, SealedSecretError
from receiver.notify.probe import send_test
from receiver.notify.redaction import redact
from receiver.notify.subscriptions import ALL_EVENTS
from receiver.storage import dashboard, events
from receiver.web.routes.common import paged, services

PAGE_ROWS = 50
HEALTH_WINDOW_S = 24 * 3600.0  # a subscription's success rate: its attempts of the last day
PROBLEM_STATUSES = ("failed", "dead")
KINDS = ("webhook", "slack", "discord", "telegram")
MAX_SELECTED = 500  # deliveries one replay form may name


def _choice(value: str | None, allowed: tuple[str, ...]) -> str | None:
    return value if value in allowed else None


def _sub_id(value: str | None) -> str | None:
    return value if value and value.startswith("sub_") and len(value) <= 64 else None


def delivery_filters(params: QueryParams | FormData) -> dict[str, str | None]:
    """The deliveries page's filter (`status`: failed or dead, `subscription`: an id), unknown values dropped."""
    status = params.get("status")
    subscription = params.get("subscription")
    return {
        "status": _choice(status if isinstance(status, str) else None, PROBLEM_STATUSES),
        "subscription_id": _sub_id(subscription if isinstance(subscription, str) else None),
    }


def _query(**values: str | None) -> str:
    kept = {key: value for key, value in values.items() if value}
    return "?" + urlencode(kept) if kept else ""


def target_text(row: Any) -> str:
    """Where a delivery or subscription goes, as pages show it: credentials in its URL redacted."""
    url = row["url"]
    return redact(url) if url else ""


# --- deliveries ---------------------------------------------------------------------------------------


async def deliveries_page(request: Request) -> Response:
    """`GET /deliveries`: failing and dead deliveries across every target, newest first, a page at a time."""
    session = await auth.page_session(request)
    if isinstance(session, Response):
        return session
    svc = services(request)
    filters = delivery_filters(request.query_params)
    cursor = request.query_params.get("cursor") or None
    rows = await dashboard.problem_deliveries(svc.db, **filters, cursor=cursor, limit=PAGE_ROWS + 1)
    page, next_cursor = paged(rows, PAGE_ROWS, lambda row: str(row["id"]))
    filter_query = {"status": filters["status"], "subscription": filters["subscription_id"]}
    context: dict[str, Any] = {
        "nav": "deliveries",
        "deliveries": [{**row, "target_text": target_text(row)} for row in page],
        "filters": filters,
        "statuses": PROBLEM_STATUSES,
        "counts": await dashboard.problem_delivery_counts(svc.db),
        "older_url": "/deliveries" + _query(**filter_query, cursor=next_cursor) if next_cursor else None,
        "first_url": "/deliveries" + _query(**filter_query) if cursor else None,
        "health": await build_health(svc),
    }
    return render(request, "deliveries.html", context)


async def retry_delivery(request: Request) -> Response:
    """`POST /deliveries/{delivery_id}/retry`: as `POST /v1/deliveries/{id}/retry` (same webhook-id)."""
    checked = await auth.check_form(request)
    if isinstance(checked, Response):
        return checked
    svc = services(request)
    delivery_id = request.path_params["delivery_id"]
    if not await svc.subscriptions.retry([delivery_id]):
        if not await events.delivery_exists(svc.db, delivery_id):
            return render_error(request, 404, f"There is no delivery {delivery_id}.")
        return render_error(request, 409, f"Delivery {delivery_id} is being sent already: there is nothing to retry.")
    return RedirectResponse("/deliveries?done=retried", status_code=303)


async def replay_deliveries(request: Request) -> Response:
    """`POST /deliveries/replay`: the deliveries ticked (`id`, repeated), or with `all=1` every failing and dead
    delivery matching the form's filter (`status`, `subscription`), queued again."""
    checked = await auth.check_form(request)
    if isinstance(checked, Response):
        return checked
    _, form = checked
    svc = services(request)
    if form.get("all") == "1":
        filters = delivery_filters(form)
        statuses = [filters["status"]] if filters["status"] else list(PROBLEM_STATUSES)
        for status in statuses:  # never the delivered ones: this page replays failures
            await svc.subscriptions.replay(status=status, subscription_id=filters["subscription_id"])
        return RedirectResponse("/deliveries?done=replayed", status_code=303)
    ids = [value for value in form.getlist("id") if isinstance(value, str) and value.startswith("dlv_")]
    if not ids:
        return render_error(request, 400, "Tick the deliveries to replay, or replay all that match the filter.")
    if len(ids) > MAX_SELECTED:
        return render_error(request, 400, f"At most {MAX_SELECTED} deliveries at once: replay by filter instead.")
    await svc.subscriptions.retry(ids)
    return RedirectResponse("/deliveries?done=replayed", status_code=303)


# --- subscriptions ------------------------------------------------------------------------------------


async def _subscriptions_context(request: Request, **extra: Any) -> dict[str, Any]:
    svc = services(request)
    health = await dashboard.subscription_health(svc.db, since=svc.clock() - HEALTH_WINDOW_S)
    return {
        "nav": "subscriptions",
        "subscriptions": [{"health": item, "row": item.row, "target_text": target_text(item.row)} for item in health],
        "kinds": KINDS,
        "event_types": ALL_EVENTS,
        "window_s": HEALTH_WINDOW_S,
        "now": svc.clock(),
        "alert_subscription": svc.settings.alert_subscription,
        "health": await build_health(svc),
        "form": {},
        **extra,
    }


async def subscriptions_page(request: Request) -> Response:
    """`GET /subscriptions`: every subscription with its health, and the form that adds one."""
    session = await auth.page_session(request)
    if isinstance(session, Response):
        return session
    return render(request, "subscriptions.html", await _subscriptions_context(request))


async def create_subscription(request: Request) -> Response:
    """`POST /subscriptions`: as `POST /v1/subscriptions`; a webhook's signing secret is shown on the page that
    answers (the only time), a refused form comes back with its values and the reason."""
    checked = await auth.check_form(request)
    if isinstance(checked, Response):
        return checked
    _, form = checked
    svc = services(request)
    values = {key: str(form.get(key) or "").strip() for key in ("kind", "url", "bot_token", "chat_id")}
    chosen = [value for value in form.getlist("events") if value in ALL_EVENTS]
    body: dict[str, Any] = {"kind": values["kind"], "events": chosen or list(ALL_EVENTS)}
    if values["kind"] == "telegram":
        body.update(bot_token=values["bot_token"] or None, chat_id=values["chat_id"] or None)
    else:
        body["url"] = values["url"] or None
    try:
        created = await svc.subscriptions.create(body)
    except InputError as exc:
        shown = {"kind": values["kind"], "url": values["url"], "chat_id": values["chat_id"], "events": chosen}
        context = await _subscriptions_context(request, form=shown, form_error=exc.message)
        return render(request, "subscriptions.html", context, status_code=422)
    if "secret" not in created:
        return RedirectResponse("/subscriptions?done=created", status_code=303)
    shown_secret = {"id": created["id"], "secret": created["secret"], "what": "created"}
    context = await _subscriptions_context(request, new_secret=shown_secret)
    return render(request, "subscriptions.html", context, status_code=201)


async def test_subscription(request: Request) -> Response:
    """`POST /subscriptions/{sub_id}/test`: one test message now (as `POST /v1/subscriptions/{id}/test`); the page
    that answers says how the target replied."""
    checked = await auth.check_form(request)
    if isinstance(checked, Response):
        return checked
    svc = services(request)
    sub_id = request.path_params["sub_id"]
    try:
        attempt = await send_test(svc.subscriptions, svc.deliverer, sub_id)
    except NotFoundError:
        return render_error(request, 404, f"There is no subscription {sub_id}.")
    except SealedSecretError as exc:
        return render_error(request, 503, exc.message)
    result = {
        "id": sub_id,
        "ok": attempt.ok,
        "status_code": attempt.status_code,
        "latency_ms": round(attempt.latency_ms, 1),
        "error": attempt.error,
    }
    return render(request, "subscriptions.html", await _subscriptions_context(request, test_result=result))


async def rotate_subscription(request: Request) -> Response:
    """`POST /subscriptions/{sub_id}/rotate`: a new signing secret, shown on the page that answers only; the old
    one keeps signing through the grace period."""
    checked = await auth.check_form(request)
    if isinstance(checked, Response):
        return checked
    svc = services(request)
    sub_id = request.path_params["sub_id"]
    try:
        rotated = await svc.subscriptions.rotate_secret(sub_id)
    except NotFoundError:
        return render_error(request, 404, f"There is no subscription {sub_id}.")
    except InputError as exc:
        return render_error(request, 422, exc.message)
    shown_secret = {
        "id": sub_id,
        "secret": rotated["secret"],
        "what": "rotated",
        "previous_valid_until": rotated["previous_valid_until"],
    }
    return render(request, "subscriptions.html", await _subscriptions_context(request, new_secret=shown_secret))


async def delete_subscription(request: Request) -> Response:
    """`POST /subscriptions/{sub_id}/delete`: as `DELETE /v1/subscriptions/{id}` (disabled for good, its
    deliveries kept)."""
    checked = await auth.check_form(request)
    if isinstance(checked, Response):
        return checked
    svc = services(request)
    sub_id = request.path_params["sub_id"]
    try:
        await svc.subscriptions.delete(sub_id)
    except NotFoundError:
        return render_error(request, 404, f"There is no subscription {sub_id}.")
    return RedirectResponse("/subscriptions?done=deleted", status_code=303)


ROUTES: list[BaseRoute] = [
    Route("/deliveries", deliveries_page, methods=["GET"]),
    Route("/deliveries/replay", replay_deliveries, methods=["POST"]),
    Route("/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]),
    Route("/subscriptions", subscriptions_page, methods=["GET"]),
    Route("/subscriptions", create_subscription, methods=["POST"]),
    Route("/subscriptions/{sub_id}/test", test_subscription, methods=["POST"]),
    Route("/subscriptions/{sub_id}/rotate", rotate_subscription, methods=["POST"]),
    Route("/subscriptions/{sub_id}/delete", delete_subscription, methods=["POST"]),
]
