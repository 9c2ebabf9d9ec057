"""List filters of the API over real HTTP: jobs by `provider`; deliveries by `since`/`until` and
`subscription_id` (listing and replay)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.web.asgi_server import running_server
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.stack import ClockedStack, Stack, StackFactory
from tests.helpers.stack import open_clocked_stack as open_stack

INPUTS = {
    "fal": ("fal-ai/stepx-edit2", {"prompt": "red", "image_url": SMALL_PNG_URI}),
    "wavespeed": ("wavespeed-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI}),
    "stepfun": ("step-image-edit-2", {"prompt": "red", "image": SMALL_PNG_URI}),
    "modelverse": ("stepfun-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI}),
}


async def test_jobs_filtered_by_provider(make_stack: StackFactory) -> None:
    """GET /v1/jobs?provider=P lists exactly P's jobs; a provider with none lists nothing."""
    stack = await make_stack(workers=False)
    made: dict[str, set[str]] = {}
    for provider, (model, input) in INPUTS.items():
        made[provider] = {(await stack.create(provider, model, input))["id"] for _ in range(2)}
    for provider, ids in made.items():
        response = await stack.client.get("/v1/jobs", params={"provider": provider})
        assert response.status_code == 200, response.text
        listed = response.json()["jobs"]
        assert {job["id"] for job in listed} == ids and {job["provider"] for job in listed} == {provider}
    assert (await stack.client.get("/v1/jobs", params={"provider": "nobody"})).json()["jobs"] == []
    assert len((await stack.client.get("/v1/jobs")).json()["jobs"]) == 8


@pytest.fixture
async def target_url() -> AsyncIterator[str]:
    async def ok(request: Request) -> Response:
        return Response(status_code=200)

    async with running_server(Starlette(routes=[Route("/hook/{name}", ok, methods=["POST"])])) as url:
        yield url


async def deliveries(stack: Stack, **params: Any) -> set[str]:
    response = await stack.client.get("/v1/deliveries", params=params)
    assert response.status_code == 200, response.text
    return {delivery["id"] for delivery in response.json()["deliveries"]}


async def finished_job(stack: ClockedStack) -> str:
    """A fal job run to success and fanned out (its deliveries made and sent), on the stack's clock."""
    job = await stack.create_job()
    assert await stack.services.runner.run_once() == 1
    await stack.wait_for(job["id"], lambda j: j["status"] == "succeeded")
    while await stack.services.runner.run_once():
        pass
    return str(job["id"])


async def test_deliveries_filtered_by_time_and_subscription(tmp_path: Path, target_url: str) -> None:
    """`since` (at or after) and `until` (before) select deliveries by creation time, `subscription_id` by
    subscription, alone or together; a replay with the same filters requeues just those."""
    async with contextlib.AsyncExitStack() as exits:
        stack = await exits.enter_async_context(open_stack(tmp_path))
        subs = []
        for name in ("a", "b"):
            body = {"kind": "webhook", "url": f"{target_url}/hook/{name}"}
            subs.append((await stack.client.post("/v1/subscriptions", json=body)).json()["id"])
        start = stack.clock()
        early = await finished_job(stack)
        stack.clock.advance(100)
        late = await finished_job(stack)
        middle = start + 50
        of_early, of_late = await deliveries(stack, job_id=early), await deliveries(stack, job_id=late)
        assert len(of_early) == len(of_late) == 2 and not of_early & of_late
        assert await deliveries(stack, since=middle) == of_late
        assert await deliveries(stack, until=middle) == of_early
        assert await deliveries(stack, since=start, until=middle) == of_early
        assert await deliveries(stack, since=middle + 100) == set()
        for sub_id in subs:
            listed = (await stack.client.get("/v1/deliveries", params={"subscription_id": sub_id})).json()
            assert len(listed["deliveries"]) == 2
            assert {delivery["subscription_id"] for delivery in listed["deliveries"]} == {sub_id}
        [late_a] = await deliveries(stack, subscription_id=subs[0], since=middle)
        assert late_a in of_late
        replay = await stack.client.post("/v1/deliveries/replay", json={"subscription_id": subs[0], "since": middle})
        assert replay.status_code == 202 and replay.json() == {"requeued": 1}
        assert await deliveries(stack, status="pending") == {late_a}
