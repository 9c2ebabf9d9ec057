"""The dashboard's jobs list, job page and job actions (cancel, resend); its login and static files too."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.dashboard import assets, auth, live
from receiver.dashboard.job_filters import STATUSES, JobFilters, time_value
from receiver.dashboard.job_rows import JobRow, error_text, image_url
from receiver.dashboard.templating import render, render_error
from receiver.dashboard.timeline import job_timeline, payload_text
from receiver.errors import ConflictError, NotFoundError
from receiver.models import TERMINAL_STATUSES, Job
from receiver.storage import dashboard
from receiver.web.routes.common import paged, services
from receiver.wiring import Services


async def jobs_list(request: Request) -> Response:
    """`GET /`: the jobs, newest first, filtered, a page at a time; the script keeps it live."""
    session = await auth.page_session(request)
    if isinstance(session, Response):
        return session
    svc = services(request)
    filters = JobFilters.from_query(request.query_params, providers=tuple(svc.providers))
    rows = await dashboard.list_jobs(
        svc.db,
        status=filters.status,
        provider=filters.provider,
        model=filters.model,
        since=filters.since,
        until=filters.until,
        search=filters.search,
        cursor=filters.cursor,
        limit=filters.limit + 1,
    )
    page, next_cursor = paged(rows, filters.limit, lambda row: str(row["id"]))
    models = sorted({model for provider in svc.providers.values() for model in provider.models})
    context: dict[str, Any] = {
        "nav": "jobs",
        "jobs": [JobRow.from_row(row) for row in page],
        "filters": filters,
        "statuses": STATUSES,
        "providers": sorted(svc.providers),
        "models": models,
        "since_value": time_value(filters.since),
        "until_value": time_value(filters.until),
        "now": svc.clock(),
        "older_url": "/" + filters.query(cursor=next_cursor) if next_cursor else None,
        "first_url": "/" + filters.first_page().query() if filters.cursor else None,
        # New jobs are added live on the first page only, and only when nothing but what the script can check
        # (status, provider, model) narrows it.
        "live_inserts": filters.cursor is None and filters.search is None and filters.until is None,
    }
    return render(request, "jobs.html", context)


def input_fallback(svc: Services, job: Job) -> str | None:
    """Before its images are copied, a job whose input we serve to the provider (`/inputs/{key}`) shows that."""
    provider = svc.providers.get(job.provider)
    value = job.input.get(provider.image_field) if provider is not None else None
    prefix = f"{svc.settings.public_url}/inputs/"
    if isinstance(value, str) and value.startswith(prefix) and "/" not in value[len(prefix) :]:
        return "/inputs/" + value[len(prefix) :]
    return None


def images_of(rows: list[Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the stored input, the stored outputs) of a job, each with its page URLs."""
    found: dict[str, list[dict[str, Any]]] = {"input": [], "output": []}
    for row in rows:
        url = image_url(row["sha256"])
        if url is not None:
            found[row["role"]].append({**row, "url": url, "position": row["position"]})
    return (found["input"][0] if found["input"] else None), found["output"]


async def job_page(request: Request) -> Response:
    """`GET /jobs/{job_id}`: input and output side by side, the timeline, the raw payloads, the actions."""
    session = await auth.page_session(request)
    if isinstance(session, Response):
        return session
    svc = services(request)
    job_id = request.path_params["job_id"]
    try:
        job = await svc.store.select_job(job_id)
    except NotFoundError:
        return render_error(request, 404, f"There is no job {job_id}.")
    inbox = await svc.store.list_inbox_for_job(job.id)
    image_rows = await dashboard.list_job_images(svc.db, job.id)
    events = await dashboard.list_job_events(svc.db, job.id)
    deliveries = await svc.subscriptions.list_deliveries(job_id=job.id, limit=500)
    stored_input, outputs = images_of(image_rows)
    # A payload may be megabytes (base64 images): made readable off the event loop.
    payloads = await asyncio.to_thread(
        lambda: [(row["kind"], row["received_at"], payload_text(row["body"])) for row in inbox]
    )
    provider_result = None
    if not inbox and job.provider_result is not None:
        provider_result = await asyncio.to_thread(payload_text, json.dumps(job.provider_result))
    context: dict[str, Any] = {
        "nav": "jobs",
        "job": job,
        "prompt": job.input.get("prompt"),
        "metadata": json.dumps(job.metadata, indent=2, ensure_ascii=False) if job.metadata else None,
        "error": error_text(job.error),
        "input_image": stored_input,
        "input_fallback": None if stored_input else input_fallback(svc, job),
        "outputs": outputs,
        "timeline": job_timeline(job, inbox=inbox, images=image_rows, events=events, deliveries=deliveries),
        "payloads": payloads,
        "provider_result": provider_result,
        "deliveries": deliveries,
        "final": job.status in TERMINAL_STATUSES,
        "now": svc.clock(),
        "duration_s": (job.completed_at - job.created_at).total_seconds() if job.completed_at else None,
    }
    return render(request, "job.html", context)


async def cancel_job(request: Request) -> Response:
    """`POST /jobs/{job_id}/cancel`: as `POST /v1/jobs/{id}/cancel` (the provider is asked to stop too)."""
    checked = await auth.check_form(request)
    if isinstance(checked, Response):
        return checked
    svc = services(request)
    job_id = request.path_params["job_id"]
    try:
        await svc.store.cancel_job(job_id, now=svc.clock())
    except NotFoundError:
        return render_error(request, 404, f"There is no job {job_id}.")
    except ConflictError as exc:
        return render_error(request, 409, exc.message)
    return RedirectResponse(f"/jobs/{job_id}?done=cancelled", status_code=303)


async def resend_job(request: Request) -> Response:
    """`POST /jobs/{job_id}/resend`: queue the job's notifications again, through the deliveries replay:
    every finished delivery of its event goes out again, to the same targets with the same `webhook-id`
    (receivers can tell it is the same message)."""
    checked = await auth.check_form(request)
    if isinstance(checked, Response):
        return checked
    svc = services(request)
    job_id = request.path_params["job_id"]
    try:
        await svc.store.select_job(job_id)
    except NotFoundError:
        return render_error(request, 404, f"There is no job {job_id}.")
    requeued = await svc.subscriptions.replay(job_id=job_id)
    done = "resent" if requeued else "nothing_to_resend"
    return RedirectResponse(f"/jobs/{job_id}?done={done}", status_code=303)


ROUTES: list[BaseRoute] = [
    *auth.ROUTES,
    *assets.ROUTES,
    Route("/", jobs_list, methods=["GET"]),
    Route("/jobs/{job_id}", job_page, methods=["GET"]),
    Route("/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/jobs/{job_id}/resend", resend_job, methods=["POST"]),
    Route("/ui/stream", live.stream, methods=["GET"]),
]
