"""`/v1/jobs`: create, list, show and cancel jobs."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from receiver.jobs.idempotency import HEADER, JOBS_SCOPE, REPLAYED_HEADER, IdempotencyClaim, fingerprint, parse_key
from receiver.models import Job, JobStatus
from receiver.support.jsontext import MAX_JSON_DEPTH
from receiver.web.http import JSONResponse, read_json
from receiver.web.operations import TEXT, Header, Operation, Param, Reply
from receiver.web.routes.common import check_choice, page_params, paged, parse_limit, services, short_digits
from receiver.web.schemas import CreateJobRequest, InboxEvent, InboxEvents, JobDetail, JobPage
from receiver.wiring import Services

MAX_PAGE = 200
INLINE_HASH_BYTES = 64 * 1024  # bodies up to this size are fingerprinted on the event loop
LISTED_DATA_URI_CHARS = 256  # longer data URIs in a job's input are shown as a descriptor in listings
DESCRIPTOR_HEAD_CHARS = 100  # how much of a data URI's head (`data:image/png;base64,`) a descriptor keeps


async def create_job(request: Request) -> JSONResponse:
    """202 with a new job; with an `Idempotency-Key` already used for the same body, 200 with that job."""
    svc = services(request)
    key = parse_key(request.headers.getlist(HEADER))
    body = await read_json(request, svc.settings.max_body_bytes)
    claim = None
    if key is not None:
        # A body may be megabytes of data URI: canonicalise and hash those off the event loop (a thread hop
        # costs more than hashing a small body).
        declared = short_digits(request.headers.get("content-length"), 6)
        small = declared is not None and declared <= INLINE_HASH_BYTES
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


async def list_jobs(request: Request) -> JSONResponse:
    svc = services(request)
    params = request.query_params
    status = params.get("status")
    check_choice("status", status, [s.value for s in JobStatus])
    limit = parse_limit(params.get("limit"), MAX_PAGE)
    jobs = await svc.store.list_jobs(
        status=status, provider=params.get("provider"), cursor=params.get("cursor"), limit=limit + 1
    )
    page, next_cursor = paged(jobs, limit, lambda job: job.id)
    listed = [{**job.to_api(), "input": describe_data_uris(job.input)} for job in page]
    return JSONResponse(JobPage.model_validate({"jobs": listed, "next_cursor": next_cursor}))


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


async def job_view(svc: Services, job: Job) -> JobDetail:
    """The job as one job's routes show it: with the images we stored for it (`images`, `input_image`)."""
    images, input_image = await svc.store.list_job_images(job.id, svc.settings.public_url)
    return JobDetail.model_validate({**job.to_api(), "images": images, "input_image": input_image})


async def get_job(request: Request) -> JSONResponse:
    svc = services(request)
    job = await svc.store.select_job(request.path_params["job_id"])
    return JSONResponse(await job_view(svc, job))


async def get_job_events(request: Request) -> JSONResponse:
    """The raw provider events recorded for a job (bodies as text), for debugging integrations."""
    svc = services(request)
    job = await svc.store.select_job(request.path_params["job_id"])
    events = await svc.store.list_inbox_for_job(job.id)
    shown = [
        InboxEvent.model_validate({**event, "body": bytes(event["body"]).decode("utf-8", "replace")})
        for event in events
    ]
    return JSONResponse(InboxEvents(events=shown))


async def cancel_job(request: Request) -> JSONResponse:
    svc = services(request)
    job = await svc.store.cancel_job(request.path_params["job_id"], now=svc.clock())
    return JSONResponse(await job_view(svc, job), status_code=202)


IDEMPOTENCY_KEY = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"}
JOB_ID = Param("path", "job_id", TEXT, "A job id (`job_...`).")
LOCATION = Header("Location", "`/v1/jobs/{id}` of the new job.")
REPLAYED = Reply(
    200,
    "A retry: the key was already used with this same body; the job it created, as it is now.",
    JobDetail,
    headers=(
        Header(REPLAYED_HEADER, "`true`.", {"const": "true"}),
        Header("Location", "`/v1/jobs/{id}` of that job."),
    ),
)
operations = [
    Operation(
        "POST",
        "/v1/jobs",
        create_job,
        summary="Create a job",
        tag="jobs",
        ok=Reply(202, "Stored, with a task that submits it to the provider.", JobDetail, headers=(LOCATION,)),
        more=(REPLAYED,),
        errors=(400, 409, 413, 415, 422, 503),
        params=(
            Param(
                "header",
                HEADER,
                IDEMPOTENCY_KEY,
                "Makes the request safe to retry: 1-255 printable ASCII characters (a UUID), bare or as a quoted "
                "structured-field string. Kept at least 24 h; scoped to this operation, not to the bearer token.",
            ),
        ),
        body=CreateJobRequest,
        example={
            "provider": "fal",
            "model": "fal-ai/stepx-edit2",
            "input": {"prompt": "make the head band red", "image_url": "https://example.com/photo.png"},
            "metadata": {"user": "u_123"},
        },
        description="`input` is the provider's own field set; unknown fields are refused for the checked "
        "models. 503 when the provider has no credentials. "
        "With an `Idempotency-Key`, a retry of the same body answers 200 with the job the key created "
        "(never a second job); the same key with another body is 409 `idempotency_key_reused`.",
    ),
    Operation(
        "GET",
        "/v1/jobs",
        list_jobs,
        summary="List jobs, newest first",
        tag="jobs",
        ok=Reply(200, "One page.", JobPage),
        errors=(422,),
        params=(
            Param("query", "status", {"enum": [status.value for status in JobStatus]}, "Only jobs in this state."),
            Param("query", "provider", TEXT, "Only jobs for this provider."),
            *page_params(MAX_PAGE),
        ),
        description=f"A data URI longer than {LISTED_DATA_URI_CHARS} characters inside a job's `input` is shown "
        "as its head, an ellipsis and its size (`data:image/png;base64,… (15203344 bytes)`); "
        "`GET /v1/jobs/{job_id}` shows the input whole.",
    ),
    Operation(
        "GET",
        "/v1/jobs/{job_id}",
        get_job,
        summary="Show a job",
        tag="jobs",
        ok=Reply(200, "The job.", JobDetail),
        errors=(404,),
        params=(JOB_ID,),
    ),
    Operation(
        "GET",
        "/v1/jobs/{job_id}/events",
        get_job_events,
        summary="Provider events recorded for a job",
        tag="jobs",
        ok=Reply(200, "Oldest first.", InboxEvents),
        errors=(404,),
        params=(JOB_ID,),
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        cancel_job,
        summary="Cancel a job",
        tag="jobs",
        ok=Reply(202, "Cancelled; the provider is asked to cancel too.", JobDetail),
        errors=(404, 409),
        params=(JOB_ID,),
    ),
]
