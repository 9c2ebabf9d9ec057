"""A provider call is never paid for twice: what is resent, what is unknown, and WaveSpeed failures settled alike."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.emulators import ModelverseEmulatorConfig, StepFunEmulatorConfig, WaveSpeedEmulatorConfig
from receiver.ingest.signatures import job_token, sign_wavespeed
from receiver.web.asgi_server import running_server
from tests.helpers.database import read_rows
from tests.helpers.images import SMALL_PNG_URI, png_bytes
from tests.helpers.stack import FAST, STEP1X, Stack, StackFactory, emulators
from tests.helpers.waiting import until


async def submit_tasks(stack: Stack, job_id: str) -> list[tuple[str, int]]:
    rows = await read_rows(
        stack.services.db.path,
        "SELECT status, attempts FROM tasks WHERE kind = 'submit' AND job_id = ? ORDER BY id",
        job_id,
    )
    return [(row["status"], row["attempts"]) for row in rows]


# Synchronous providers: only a 429 (and StepFun's documented 503 "overloaded") says the edit was not done.


@pytest.mark.parametrize(
    ("provider", "model", "status"),
    [
        pytest.param("modelverse", "stepfun-ai/step1x-edit", 408, id="modelverse-408"),
        pytest.param("modelverse", "stepfun-ai/step1x-edit", 500, id="modelverse-500"),
        pytest.param("modelverse", "stepfun-ai/step1x-edit", 503, id="modelverse-503"),
        pytest.param("modelverse", "stepfun-ai/step1x-edit", 504, id="modelverse-504"),
        pytest.param("stepfun", "step-image-edit-2", 408, id="stepfun-408"),
        pytest.param("stepfun", "step-image-edit-2", 500, id="stepfun-500"),
    ],
)
async def test_sync_timeouts_and_server_errors_fail_the_job_unsent(
    make_stack: StackFactory, provider: str, model: str, status: int
) -> None:
    """A 408, 500 or 504 to a synchronous edit (or a 503 from Modelverse, whose error table has none) may
    follow a paid edit: the job fails with provider_outcome_unknown after one call, never retried."""
    stack = await make_stack(
        stepfun_config=StepFunEmulatorConfig(latency_s=0.01, fail_statuses=[status]),
        modelverse_config=ModelverseEmulatorConfig(latency_s=0.01, fail_statuses=[status]),
    )
    job = await stack.create(provider, model, {"prompt": "red", "image": SMALL_PNG_URI})
    final = await stack.wait_final(job["id"])
    assert final["status"] == "failed"
    assert final["error"]["code"] == "provider_outcome_unknown"
    assert str(status) in final["error"]["message"] and "not resent" in final["error"]["message"]

    async def submit_settled() -> bool:  # the job fails inside the submit task, which is marked done just after
        return all(status in ("done", "dead") for status, _ in await submit_tasks(stack, job["id"]))

    await until(submit_settled)
    assert await submit_tasks(stack, job["id"]) == [("done", 1)]
    assert getattr(emulators(stack), provider).calls == 1


async def test_stepfun_503_overloaded_is_retried(make_stack: StackFactory) -> None:
    """StepFun documents 503 as "overloaded" (nothing done): the edit is sent again and succeeds."""
    stack = await make_stack(stepfun_config=StepFunEmulatorConfig(latency_s=0.01, fail_statuses=[503], retry_after_s=0))
    job = await stack.create("stepfun", "step-image-edit-2", {"prompt": "red", "image": SMALL_PNG_URI})
    final = await stack.wait_final(job["id"], timeout_s=20)
    assert final["status"] == "succeeded", final["error"]
    assert emulators(stack).stepfun.calls == 2


@pytest.mark.parametrize("status", [500, 503])
async def test_wavespeed_lost_submit_answer_fails_the_job_unsent(make_stack: StackFactory, status: int) -> None:
    """A WaveSpeed 5xx to a submit (503 included: only 429 says nothing was created) may follow a billed
    prediction that nothing could ever find without its id: the job fails at once with
    provider_outcome_unknown, and the submit is never sent again."""
    config = WaveSpeedEmulatorConfig(**FAST, submit_failures=[status])
    stack = await make_stack(wavespeed_config=config)
    job = await stack.create("wavespeed", STEP1X, {"prompt": "red", "image": SMALL_PNG_URI})
    final = await stack.wait_final(job["id"])
    assert (final["status"], final["error"]["code"]) == ("failed", "provider_outcome_unknown")
    assert f"WaveSpeed answered {status}" in final["error"]["message"] and "not resent" in final["error"]["message"]

    async def submit_settled() -> bool:
        return all(status in ("done", "dead") for status, _ in await submit_tasks(stack, job["id"]))

    await until(submit_settled)
    assert await submit_tasks(stack, job["id"]) == [("done", 1)]
    assert emulators(stack).wavespeed.predictions == {} and emulators(stack).wavespeed.config.submit_failures == []
    # Had the prediction run, its webhook is kept against the job, which stays failed.
    body = json.dumps({"id": "lost-prediction", "model": STEP1X, "status": "completed", "error": ""}).encode()
    secret = emulators(stack).wavespeed.config.webhook_secret
    headers = sign_wavespeed(secret, webhook_id=uuid.uuid4().hex, timestamp=int(time.time()), body=body)
    token = job_token(b"test-secret", "wavespeed", job["id"])
    response = await stack.client.post(f"/webhooks/wavespeed/{job['id']}?token={token}", content=body, headers=headers)
    assert (response.status_code, response.json()) == (200, {"status": "recorded"})
    assert (await stack.job(job["id"]))["status"] == "failed"
    [event] = await stack.services.store.list_inbox_for_job(job["id"])
    assert (event["kind"], event["dedup_key"]) == ("webhook", "lost-prediction")


async def test_modelverse_takes_a_bare_base64_image(make_stack: StackFactory) -> None:
    """Modelverse's `image` may be bare base64 (its page: "Base64 data or image link"): accepted, sent as given."""
    stack = await make_stack()
    bare = SMALL_PNG_URI.split(",", 1)[1]
    job = await stack.create("modelverse", "stepfun-ai/step1x-edit", {"prompt": "red", "image": bare})
    assert job["input"]["image"] == bare
    final = await stack.wait_final(job["id"])
    assert final["status"] == "succeeded", final["error"]
    assert final["result"]["images"][0]["width"] == 8  # the emulator edited the 8x8 input


# WaveSpeed: a failure's code is only in the polled prediction, so webhook and poll decide alike.


@pytest.mark.parametrize("webhooks", [True, False], ids=["by-webhook", "by-poll"])
@pytest.mark.parametrize(
    ("code", "status", "error_code", "predictions"),
    [(5003, "succeeded", None, 2), (1402, "failed", "wavespeed_1402", 1)],
    ids=["5003-resubmitted", "1402-fails"],
)
async def test_wavespeed_failure_is_decided_alike_by_webhook_and_poll(
    make_stack: StackFactory, webhooks: bool, code: int, status: str, error_code: str | None, predictions: int
) -> None:
    """A failed prediction is resubmitted (5xxx) or fails the job with its code (1xxx) whether the failure
    arrives by its documented webhook (no `code`: a poll at once reads it) or by a poll."""
    config = WaveSpeedEmulatorConfig(**FAST, task_error_code=code)
    # With webhooks the reconciler's first poll is an hour away: only the webhook can start the poll.
    poll_after_s = 3600.0 if webhooks else 0.05
    stack = await make_stack(
        wavespeed_config=config,
        wavespeed_webhooks=webhooks,
        wavespeed_poll_after_s=poll_after_s,
        wavespeed_poll_interval_s=0.05,
    )
    job = await stack.create("wavespeed", STEP1X, {"prompt": "red", "image": SMALL_PNG_URI})
    final = await stack.wait_final(job["id"], timeout_s=30)
    assert final["status"] == status, final["error"]
    if error_code is not None:
        assert final["error"]["code"] == error_code
        assert "download" in final["error"]["message"].lower()
    first, *_ = emulators(stack).wavespeed.predictions.values()
    assert len(emulators(stack).wavespeed.predictions) == predictions
    events = await stack.services.store.list_inbox_for_job(job["id"])
    first_events = [event["kind"] for event in events if event["dedup_key"] == first.id]
    assert first_events == (["webhook", "poll"] if webhooks else ["poll"])
    if webhooks:
        webhook_body = json.loads(next(event["body"] for event in events if event["kind"] == "webhook"))
        assert "code" not in webhook_body  # the emulator sends the prediction exactly as documented


@dataclass
class FakeWaveSpeed:
    """A WaveSpeed prediction API whose one prediction reports whatever `status` says (the emulator only
    knows the documented statuses)."""

    status: str = "queued"
    base: str = ""
    gets: int = 0
    submits: int = 0
    seen: list[str] = field(default_factory=list)

    def data(self) -> dict[str, Any]:
        outputs = [f"{self.base}/out.png"] if self.status == "completed" else []
        get_url = f"{self.base}/api/v3/predictions/p1/result"
        return {"id": "p1", "model": STEP1X, "status": self.status, "outputs": outputs, "urls": {"get": get_url}}

    async def submit(self, request: Request) -> Response:
        self.submits += 1
        return JSONResponse({"code": 200, "message": "success", "data": {**self.data(), "status": "created"}})

    async def result(self, request: Request) -> Response:
        self.gets += 1
        self.seen.append(self.status)
        return JSONResponse({"code": 200, "message": "success", "data": self.data()})

    async def image(self, request: Request) -> Response:
        return Response(png_bytes(8, 8), media_type="image/png")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v3/{owner}/{model}", self.submit, methods=["POST"]),
                Route("/api/v3/predictions/{id}/result", self.result),
                Route("/out.png", self.image),
            ]
        )


@contextlib.asynccontextmanager
async def fake_wavespeed() -> AsyncIterator[FakeWaveSpeed]:
    fake = FakeWaveSpeed()
    async with running_server(fake.app()) as url:
        fake.base = url
        yield fake


async def test_wavespeed_unknown_status_is_polled_again(make_stack: StackFactory) -> None:
    """A poll answering a status WaveSpeed does not document is no failure: the job stays open, is polled
    again, and ends as the prediction does."""
    async with fake_wavespeed() as fake:
        stack = await make_stack(
            wavespeed_url=fake.base,
            wavespeed_webhooks=False,
            wavespeed_poll_after_s=0.05,
            wavespeed_poll_interval_s=0.05,
        )
        job = await stack.create("wavespeed", STEP1X, {"prompt": "red", "image": SMALL_PNG_URI})
        await until(lambda: fake.gets >= 2)
        assert (await stack.job(job["id"]))["status"] in ("submitted", "running")
        fake.status = "completed"
        final = await stack.wait_final(job["id"], timeout_s=20)
    assert final["status"] == "succeeded", final["error"]
    assert fake.submits == 1 and fake.seen[:2] == ["queued", "queued"]


@pytest.mark.parametrize("status", ["queued", ["failed"], None], ids=["queued", "list", "null"])
async def test_wavespeed_webhook_with_unknown_status_is_ignored(make_stack: StackFactory, status: Any) -> None:
    """A signed webhook with a status WaveSpeed does not document is answered `ignored`: the job stays open."""
    stack = await make_stack(workers=False)
    emulators(stack).wavespeed.config.no_delivery = True
    job = await stack.create("wavespeed", STEP1X, {"prompt": "red", "image": SMALL_PNG_URI})
    assert await stack.services.runner.run_once() == 1
    job = await stack.job(job["id"])
    body = json.dumps({"id": job["provider_request_id"], "model": STEP1X, "status": status, "error": ""}).encode()
    secret = emulators(stack).wavespeed.config.webhook_secret
    headers = sign_wavespeed(secret, webhook_id=uuid.uuid4().hex, timestamp=int(time.time()), body=body)
    token = job_token(b"test-secret", "wavespeed", job["id"])
    response = await stack.client.post(f"/webhooks/wavespeed/{job['id']}?token={token}", content=body, headers=headers)
    assert (response.status_code, response.json()) == (200, {"status": "ignored"})
    after = await stack.job(job["id"])
    assert (after["status"], after["error"]) == ("submitted", None)


@pytest.mark.parametrize(("seed", "accepted"), [(-1, True), (2_147_483_647, True), (2_147_483_648, False)])
async def test_wavespeed_seed_range_is_the_v3_pages(make_stack: StackFactory, seed: int, accepted: bool) -> None:
    """WaveSpeed v3's seed is -1..2147483647: inside it the job is accepted, above it a 422 names input.seed."""
    stack = await make_stack(workers=False)
    body = {"provider": "wavespeed", "model": STEP1X, "input": {"prompt": "red", "image": SMALL_PNG_URI, "seed": seed}}
    response = await stack.client.post("/v1/jobs", json=body)
    if accepted:
        assert response.status_code == 202, response.text
    else:
        assert response.status_code == 422
        assert response.json()["error"]["message"].startswith("input.seed: ")
