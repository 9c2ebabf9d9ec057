"""`/v1/deliveries`: the delivery log, retry and replay; and the secret that signs `callback_url` deliveries."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request

from receiver.errors import InputError, NotFoundError
from receiver.storage import events
from receiver.validation import describe_validation_error
from receiver.web.http import JSONResponse, read_json
from receiver.web.operations import TEXT, Operation, Param, Reply
from receiver.web.routes.common import check_choice, page_params, paged, parse_limit, query_number, services
from receiver.web.schemas import DELIVERY_STATUSES, CallbackSecret, DeliveryPage, ReplayFilter, Requeued

MAX_PAGE = 500


def delivery_filters(request: Request, body: dict[str, object] | None = None) -> dict[str, object]:
    source = body if body is not None else request.query_params
    status = source.get("status")
    check_choice("status", status, DELIVERY_STATUSES)
    return {
        "job_id": source.get("job_id"),
        "subscription_id": source.get("subscription_id"),
        "status": status,
        "since": source.get("since") if body is not None else query_number(request, "since"),
        "until": source.get("until") if body is not None else query_number(request, "until"),
    }


async def list_deliveries(request: Request) -> JSONResponse:
    svc = services(request)
    limit = parse_limit(request.query_params.get("limit"), MAX_PAGE)
    rows = await svc.subscriptions.list_deliveries(
        **delivery_filters(request), cursor=request.query_params.get("cursor"), limit=limit + 1
    )
    page, next_cursor = paged(rows, limit, lambda row: row["id"])
    return JSONResponse(DeliveryPage.model_validate({"deliveries": page, "next_cursor": next_cursor}))


async def retry_delivery(request: Request) -> JSONResponse:
    svc = services(request)
    delivery_id = request.path_params["delivery_id"]
    if not await events.delivery_exists(svc.db, delivery_id):
        raise NotFoundError(f"delivery {delivery_id} not found")
    return JSONResponse(Requeued(requeued=await svc.subscriptions.retry([delivery_id])), status_code=202)


async def replay_deliveries(request: Request) -> JSONResponse:
    """Bulk replay by subscription, job, status and/or time range (`since`/`until`, Unix seconds)."""
    svc = services(request)
    try:
        replay = ReplayFilter.model_validate(await read_json(request, svc.settings.max_body_bytes))
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc, prefix="")) from None
    body = replay.model_dump()
    if all(value is None for value in body.values()):
        raise InputError("body: give at least one of job_id, subscription_id, status, since, until")
    requeued = await svc.subscriptions.replay(**delivery_filters(request, body))
    return JSONResponse(Requeued(requeued=requeued), status_code=202)


async def get_callback_secret(request: Request) -> JSONResponse:
    """The secret that signs `callback_url` deliveries (Standard Webhooks), for receivers to verify with."""
    return JSONResponse(CallbackSecret(secret=services(request).deliverer.callback_secret))


operations = [
    Operation(
        "GET",
        "/v1/deliveries",
        list_deliveries,
        summary="Deliveries, newest first",
        tag="deliveries",
        ok=Reply(200, "With their attempt logs.", DeliveryPage),
        errors=(422,),
        params=(
            Param("query", "job_id", TEXT, "Only deliveries of this job's events."),
            Param("query", "subscription_id", TEXT, "Only deliveries to this subscription."),
            Param("query", "status", {"enum": list(DELIVERY_STATUSES)}, "Only deliveries in this state."),
            Param("query", "since", {"type": "number"}, "Created at or after (Unix seconds)."),
            Param("query", "until", {"type": "number"}, "Created before (Unix seconds)."),
            *page_params(MAX_PAGE),
        ),
    ),
    Operation(
        "POST",
        "/v1/deliveries/replay",
        replay_deliveries,
        summary="Send matching deliveries again",
        tag="deliveries",
        ok=Reply(202, "How many were requeued (pending ones are left alone).", Requeued),
        errors=(413, 415, 422, 503),
        body=ReplayFilter,
        example={"status": "dead", "since": 1767225600},
        description="Give at least one filter.",
    ),
    Operation(
        "POST",
        "/v1/deliveries/{delivery_id}/retry",
        retry_delivery,
        summary="Send one delivery again",
        tag="deliveries",
        ok=Reply(202, "Requeued, same `webhook-id`.", Requeued),
        errors=(404,),
        params=(Param("path", "delivery_id", TEXT, "A delivery id."),),
    ),
    Operation(
        "GET",
        "/v1/callback-secret",
        get_callback_secret,
        summary="The secret that signs `callback_url` deliveries",
        tag="deliveries",
        ok=Reply(200, "A Standard Webhooks `whsec_` secret.", CallbackSecret),
    ),
]
