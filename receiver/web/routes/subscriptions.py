"""`/v1/subscriptions`: create, list, stop and test fan-out targets, and rotate their signing secrets."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from receiver.notify.probe import send_test
from receiver.web.http import JSONResponse, read_json
from receiver.web.operations import TEXT, Operation, Param, Reply
from receiver.web.routes.common import services
from receiver.web.schemas import (
    CreatedSubscription,
    CreateSubscription,
    RotatedSubscription,
    SentTest,
    Subscription,
    Subscriptions,
)


async def create_subscription(request: Request) -> JSONResponse:
    """201; a webhook's `secret` is in this answer only."""
    svc = services(request)
    body = await read_json(request, svc.settings.max_body_bytes)
    created = await svc.subscriptions.create(body)
    shown = CreatedSubscription if "secret" in created else Subscription
    return JSONResponse(shown.model_validate(created), status_code=201)


async def list_subscriptions(request: Request) -> JSONResponse:
    listed = await services(request).subscriptions.list_all()
    return JSONResponse(Subscriptions.model_validate({"subscriptions": listed}))


async def delete_subscription(request: Request) -> Response:
    await services(request).subscriptions.delete(request.path_params["sub_id"])
    return Response(status_code=204)


async def rotate_secret(request: Request) -> JSONResponse:
    rotated = await services(request).subscriptions.rotate_secret(request.path_params["sub_id"])
    return JSONResponse(RotatedSubscription.model_validate(rotated))


async def test_subscription(request: Request) -> JSONResponse:
    svc = services(request)
    attempt = await send_test(svc.subscriptions, svc.deliverer, request.path_params["sub_id"])
    latency_ms = round(attempt.latency_ms, 1)
    return JSONResponse(
        SentTest(ok=attempt.ok, status_code=attempt.status_code, latency_ms=latency_ms, error=attempt.error)
    )


SUB_ID = Param("path", "sub_id", TEXT, "A subscription id (`sub_...`).")
operations = [
    Operation(
        "POST",
        "/v1/subscriptions",
        create_subscription,
        summary="Create a subscription",
        tag="subscriptions",
        ok=Reply(201, "Stored; a webhook's `secret` is shown only now.", CreatedSubscription),
        errors=(413, 415, 422, 503),
        body=CreateSubscription,
        example={"kind": "webhook", "url": "https://hooks.example.com/receiver", "events": ["job.succeeded"]},
    ),
    Operation(
        "GET",
        "/v1/subscriptions",
        list_subscriptions,
        summary="List subscriptions",
        tag="subscriptions",
        ok=Reply(200, "All, with their state.", Subscriptions),
    ),
    Operation(
        "DELETE",
        "/v1/subscriptions/{sub_id}",
        delete_subscription,
        summary="Stop a subscription (its history stays)",
        tag="subscriptions",
        ok=Reply(204, "Disabled."),
        errors=(404,),
        params=(SUB_ID,),
    ),
    Operation(
        "POST",
        "/v1/subscriptions/{sub_id}/rotate-secret",
        rotate_secret,
        summary="New signing secret",
        tag="subscriptions",
        ok=Reply(200, "The old secret also signs until `previous_valid_until`.", RotatedSubscription),
        errors=(404, 422),
        params=(SUB_ID,),
    ),
    Operation(
        "POST",
        "/v1/subscriptions/{sub_id}/test",
        test_subscription,
        summary="Send a test notification now",
        tag="subscriptions",
        ok=Reply(200, "How the target replied.", SentTest),
        errors=(404, 503),
        params=(SUB_ID,),
    ),
]
