"""`/v1/jobs`: create, list, show and cancel jobs."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from receiver.errors import InputError
from receiver.http import JSONResponse, read_json
from receiver.models import Job, JobStatus
from receiver.services import Services

MAX_PAGE = 200


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def create_job(request: Request) -> JSONResponse:
    svc = services(request)
    body = await read_json(request, svc.settings.max_body_bytes)
    job = await svc.jobs.create(body)
    return JSONResponse(await job_view(svc, job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


def parse_limit(raw: str) -> int:
    """A page size from the query string; `str.isdigit` alone lets through "²" and digit runs `int` refuses."""
    if raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= MAX_PAGE:
        return int(raw)
    raise InputError(f"limit: must be an integer from 1 to {MAX_PAGE}")


async def list_jobs(request: Request) -> JSONResponse:
    svc = services(request)
    params = request.query_params
    status = params.get("status")
    if status is not None and status not in {s.value for s in JobStatus}:
        raise InputError(f"status: must be one of {[s.value for s in JobStatus]}")
    limit = parse_limit(params.get("limit", "50"))
    jobs = await svc.store.list_jobs(
        status=status, provider=params.get("provider"), cursor=params.get("cursor"), limit=limit + 1
    )
    page, more = jobs[:limit], len(jobs) > limit
    return JSONResponse({"jobs": [job.to_api() for job in page], "next_cursor": page[-1].id if more else None})


async def job_view(svc: Services, job: Job) -> dict[str, Any]:
    """The job as one job's routes show it: with the images we stored for it (`images`, `input_image`)."""
    images, input_image = await svc.store.list_job_images(job.id, svc.settings.public_url)
    return {**job.to_api(), "images": images, "input_image": input_image}


async def get_job(request: Request) -> JSONResponse:
    svc = services(request)
    job = await svc.store.select_job(request.path_params["job_id"])
    return JSONResponse(await job_view(svc, job))


async def get_job_events(request: Request) -> JSONResponse:
    """The raw provider events recorded for a job (bodies as text), for debugging integrations."""
    svc = services(request)
    job = await svc.store.select_job(request.path_params["job_id"])
    events = await svc.store.list_inbox_for_job(job.id)
    for event in events:
        event["body"] = bytes(event["body"]).decode("utf-8", "replace")
    return JSONResponse({"events": events})


async def cancel_job(request: Request) -> JSONResponse:
    svc = services(request)
    job = await svc.store.cancel_job(request.path_params["job_id"], now=svc.clock())
    return JSONResponse(await job_view(svc, job), status_code=202)


routes = [
    Route("/v1/jobs", create_job, methods=["POST"]),
    Route("/v1/jobs", list_jobs, methods=["GET"]),
    Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/jobs/{job_id}/events", get_job_events, methods=["GET"]),
    Route("/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
]
