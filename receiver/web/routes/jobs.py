"""`/v1/jobs`: create, list, show and cancel jobs."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from receiver.errors import InputError
from receiver.jobs.idempotency import HEADER, JOBS_SCOPE, REPLAYED_HEADER, IdempotencyClaim, fingerprint, parse_key
from receiver.models import Job, JobStatus
from receiver.support.jsontext import MAX_JSON_DEPTH
from receiver.web.http import JSONResponse, read_json
from receiver.wiring import Services

MAX_PAGE = 200
INLINE_HASH_BYTES = 64 * 1024  # bodies up to this size are fingerprinted on the event loop
LISTED_DATA_URI_CHARS = 256  # longer data URIs in a job's input are shown as a descriptor in listings
DESCRIPTOR_HEAD_CHARS = 100  # how much of a data URI's head (`data:image/png;base64,`) a descriptor keeps


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def create_job(request: Request) -> JSONResponse:
    """202 with a new job; with an `Idempotency-Key` already used for the same body, 200 with that job."""
    svc = services(request)
    key = parse_key(request.headers.getlist(HEADER))
    body = await read_json(request, svc.settings.max_body_bytes)
    claim = None
    if key is not None:
        # A body may be megabytes of data URI: canonicalise and hash those off the event loop (a thread hop
        # costs more than hashing a small body).
        declared = request.headers.get("content-length", "")
        small = declared.isascii() and declared.isdigit() and len(declared) <= 6 and int(declared) <= INLINE_HASH_BYTES
        digest = fingerprint(body) if small else await asyncio.to_thread(fingerprint, body)
        claim = IdempotencyClaim(JOBS_SCOPE, key, digest)
        held = await svc.store.find_idempotent_job(claim)
        if held is not None:
            return await created_answer(svc, held, replayed=True)
    job, replayed = await svc.jobs.create(body, idempotency=claim)
    return await created_answer(svc, job, replayed=replayed)


async def created_answer(svc: Services, job: Job, *, replayed: bool) -> JSONResponse:
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    return JSONResponse(await job_view(svc, job), status_code=200 if replayed else 202, headers=headers)


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
    listed = [{**job.to_api(), "input": describe_data_uris(job.input)} for job in page]
    return JSONResponse({"jobs": listed, "next_cursor": page[-1].id if more else None})


def describe_data_uris(value: Any, depth: int = 0) -> Any:
    """`value` with each data URI longer than LISTED_DATA_URI_CHARS replaced by its head, an ellipsis and
    its size, as in `data:image/png;base64,… (15203344 bytes)`: a page of jobs whose inputs carry
    images would otherwise be megabytes per job. `GET /v1/jobs/{id}` shows the input whole."""
    if isinstance(value, str):
        if not value.startswith("data:") or len(value) <= LISTED_DATA_URI_CHARS:
            return value
        comma = value.find(",", 0, DESCRIPTOR_HEAD_CHARS)
        head = value[: comma + 1] if comma >= 0 else value[:DESCRIPTOR_HEAD_CHARS]
        size = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
        return f"{head}… ({size} bytes)"
    if depth >= MAX_JSON_DEPTH:  # as deep as a stored input can be
        return value
    if isinstance(value, dict):
        return {key: describe_data_uris(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [describe_data_uris(item, depth + 1) for item in value]
    return value


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
