"""The reconciler and the poll/cancel tasks against the fal emulator: lost webhooks, races, timeouts, cancels."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from receiver.emulators.fal import FalEmulatorConfig, FalRequest, RequestStatus
from tests.helpers.database import read_rows
from tests.helpers.provider_webhooks import signed_fal_webhook
from tests.helpers.stack import FAST, ClockedFactory, ClockedStack, StackFactory
from tests.helpers.waiting import until

STEPX_APP = "/fal/fal-ai/stepx-edit2"
OTHER_PAYLOAD = {"images": [{"url": "https://v3.fal.media/files/x/other.png", "width": 8, "height": 8}], "seed": 1}


async def submitted(stack: ClockedStack, *, until_status: RequestStatus | None = None) -> tuple[str, FalRequest]:
    """Create a job, run its submit, and wait until fal's request reaches `until_status`; (job id, request)."""
    job = await stack.create_job()
    assert await stack.services.runner.run_once() == 1
    [request] = stack.emulator.requests.values()
    if until_status is not None:
        await until(lambda: request.status is until_status)
    return job["id"], request


def polls(stack: ClockedStack, request: FalRequest) -> list[str]:
    """What the receiver asked fal's queue about this request, in order: "status", "result", "cancel"."""
    base = f"{STEPX_APP}/requests/{request.request_id}"
    names = {("GET", f"{base}/status"): "status", ("GET", base): "result", ("PUT", f"{base}/cancel"): "cancel"}
    return [names[call] for call in stack.emulator_calls if call in names]


async def events(stack: ClockedStack, job_id: str) -> list[tuple[str, str, str]]:
    rows = await stack.services.store.list_inbox_for_job(job_id)
    return [(row["kind"], row["dedup_key"], row["outcome"]) for row in rows]


async def send_webhook(stack: ClockedStack, job_id: str, request_id: str, payload: dict[str, Any]) -> Any:
    body, headers = signed_fal_webhook(stack.signing_key, request_id, payload, timestamp=int(stack.clock()))
    response = await stack.client.post(stack.webhook_path(job_id), content=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_lost_webhook_is_recovered_by_polling(clocked_stack: ClockedFactory) -> None:
    """With no webhook, the reconciler polls after `reconcile_after_s`: status, then result; the job succeeds."""
    stack = await clocked_stack(emulator_config=FalEmulatorConfig(**FAST, no_delivery=True))
    job_id, request = await submitted(stack, until_status=RequestStatus.COMPLETED)
    reconciler, runner = stack.services.reconciler, stack.services.runner
    stack.clock.advance(59)
    assert await reconciler.run_once() == ([], [])  # not due yet: a webhook may still come
    stack.clock.advance(2)
    assert await reconciler.run_once() == ([job_id], [])
    assert await runner.run_once() == 1
    assert polls(stack, request) == ["status", "result"]
    job = await stack.job(job_id)
    assert job["status"] == "succeeded"
    assert job["provider_result"] == request.output
    assert job["completed_at"] is not None and job["error"] is None
    assert await events(stack, job_id) == [("poll", request.request_id, "succeeded")]
    stack.clock.advance(3600)
    assert await reconciler.run_once() == ([], [])  # final jobs are neither polled nor timed out
    assert await runner.run_once() == 1  # only the success's fetch_images: no poll
    assert await runner.run_once() == 0


@pytest.mark.parametrize(
    ("config", "fal_status", "status"),
    [
        (FalEmulatorConfig(queue_s=30, no_delivery=True), RequestStatus.IN_QUEUE, "submitted"),
        (FalEmulatorConfig(queue_s=0, inference_s=30, no_delivery=True), RequestStatus.IN_PROGRESS, "running"),
    ],
    ids=["in-queue", "in-progress"],
)
async def test_poll_of_unfinished_job_moves_it_and_backs_off(
    clocked_stack: ClockedFactory, config: FalEmulatorConfig, fal_status: RequestStatus, status: str
) -> None:
    """A poll finding the job unfinished moves it forward (IN_PROGRESS -> running); poll gaps then double."""
    stack = await clocked_stack(emulator_config=config, reconcile_after_s=5, poll_interval_s=10)
    job_id, request = await submitted(stack, until_status=fal_status)
    reconciler, runner = stack.services.reconciler, stack.services.runner
    for gap in [5, 10, 20]:
        stack.clock.advance(gap - 1)
        assert await reconciler.run_once() == ([], [])
        stack.clock.advance(1)
        assert await reconciler.run_once() == ([job_id], [])
        assert await runner.run_once() == 1
        job = await stack.job(job_id)
        assert job["status"] == status
        assert job["result"] is None and job["completed_at"] is None
    assert polls(stack, request) == ["status"] * 3
    assert await events(stack, job_id) == []  # unfinished states are not events


async def test_model_error_is_found_by_polling(clocked_stack: ClockedFactory) -> None:
    """A model failure with no webhook fails the job through the poll, with fal's error type and text."""
    stack = await clocked_stack(emulator_config=FalEmulatorConfig(**FAST, no_delivery=True, model_error=True))
    job_id, request = await submitted(stack, until_status=RequestStatus.COMPLETED)
    stack.clock.advance(61)
    assert await stack.services.reconciler.run_once() == ([job_id], [])
    assert await stack.services.runner.run_once() == 1
    job = await stack.job(job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "model_error"
    assert job["error"]["message"].startswith("Emulated model failure")
    assert job["result"] is None
    assert polls(stack, request) == ["status"]
    assert await events(stack, job_id) == [("poll", request.request_id, "failed")]


async def test_expired_result_fails_the_job(clocked_stack: ClockedFactory) -> None:
    """A completed request whose result fal no longer keeps fails the job with result_expired."""
    config = FalEmulatorConfig(**FAST, no_delivery=True, result_ttl_s=0)
    stack = await clocked_stack(emulator_config=config)
    job_id, request = await submitted(stack, until_status=RequestStatus.COMPLETED)
    stack.clock.advance(61)
    await stack.services.reconciler.run_once()
    assert await stack.services.runner.run_once() == 1
    job = await stack.job(job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "result_expired"
    assert polls(stack, request) == ["status", "result"]


async def test_webhook_without_payload_fetches_the_result(clocked_stack: ClockedFactory) -> None:
    """A `payload: null` webhook moves the job to running and fetches the result, which ends it succeeded."""
    stack = await clocked_stack(emulator_config=FalEmulatorConfig(**FAST, payload_error=True))
    job_id, request = await submitted(stack)
    running = await stack.wait_for(job_id, lambda job: job["status"] == "running")
    assert running["result"] is None
    assert await stack.services.runner.run_once() == 1  # the fetch, queued by the webhook, no reconciler needed
    job = await stack.job(job_id)
    assert job["status"] == "succeeded"
    assert request.output is not None and job["provider_result"] == request.output
    assert job["result"]["images"][0]["url"].startswith(f"{stack.emulator_url}/fal/cdn/files/")
    assert polls(stack, request) == ["status", "result"]
    assert await events(stack, job_id) == [
        ("webhook", request.request_id, "succeeded"),
        ("poll", request.request_id, "succeeded"),
    ]


async def test_poll_first_then_webhook_finalizes_once(clocked_stack: ClockedFactory) -> None:
    """When the poll finalizes the job first, a later webhook is recorded but changes nothing."""
    stack = await clocked_stack(emulator_config=FalEmulatorConfig(**FAST, no_delivery=True))
    job_id, request = await submitted(stack, until_status=RequestStatus.COMPLETED)
    stack.clock.advance(61)
    await stack.services.reconciler.run_once()
    await stack.services.runner.run_once()
    first = await stack.job(job_id)
    assert first["status"] == "succeeded" and first["provider_result"] == request.output
    stack.clock.advance(1)
    assert await send_webhook(stack, job_id, request.request_id, OTHER_PAYLOAD) == {"status": "recorded"}
    assert await stack.job(job_id) == first
    assert [kind for kind, _, _ in await events(stack, job_id)] == ["poll", "webhook"]


async def test_webhook_during_poll_finalizes_once(clocked_stack: ClockedFactory) -> None:
    """A webhook that lands while a poll is in flight wins; the poll's answer is recorded but changes nothing."""
    stack = await clocked_stack(emulator_config=FalEmulatorConfig(**FAST, no_delivery=True))
    assert stack.recorder is not None
    job_id, request = await submitted(stack, until_status=RequestStatus.COMPLETED)
    stack.clock.advance(61)
    assert await stack.services.reconciler.run_once() == ([job_id], [])
    stack.recorder.hold = {"GET"}
    stack.recorder.gate.clear()
    polling = asyncio.create_task(stack.services.runner.run_once())
    await until(lambda: polls(stack, request) == ["status"])  # the poll has asked fal and waits for its answer
    assert await send_webhook(stack, job_id, request.request_id, OTHER_PAYLOAD) == {"status": "applied"}
    first = await stack.job(job_id)
    assert first["status"] == "succeeded" and first["provider_result"] == OTHER_PAYLOAD
    stack.recorder.gate.set()
    assert await polling == 1
    assert polls(stack, request) == ["status", "result"]
    assert await stack.job(job_id) == first
    assert [kind for kind, _, _ in await events(stack, job_id)] == ["webhook", "poll"]


async def test_duplicate_delivery_is_recorded_once(make_stack: StackFactory) -> None:
    """fal delivering the same webhook twice leaves one inbox row; both deliveries are answered 2xx."""
    stack = await make_stack(emulator_config=FalEmulatorConfig(**FAST, duplicate_delivery=True))
    job = await stack.create_job()
    final = await stack.wait_final(job["id"])
    assert final["status"] == "succeeded"
    [request] = stack.emulator.requests.values()
    await until(lambda: len(request.deliveries) == 2)
    assert [(attempt.delivery, attempt.status_code) for attempt in request.deliveries] == [(1, 200), (2, 200)]
    rows = await stack.services.store.list_inbox_for_job(job["id"])
    assert [(row["kind"], row["dedup_key"]) for row in rows] == [("webhook", request.request_id)]
    after = await stack.job(job["id"])  # its images may have been stored meanwhile: compare the outcome
    settled = ("status", "result", "provider_result", "error", "completed_at", "provider_request_id")
    assert {key: after[key] for key in settled} == {key: final[key] for key in settled}


@pytest.mark.parametrize("submit_first", [True, False], ids=["submitted", "never-submitted"])
async def test_job_past_its_timeout_fails_and_stays_failed(clocked_stack: ClockedFactory, submit_first: bool) -> None:
    """A job open past `job_timeout_s` fails with code timeout; later webhooks and submits do not move it."""
    config = FalEmulatorConfig(**FAST, no_delivery=True)
    stack = await clocked_stack(emulator_config=config, job_timeout_s=120, reconcile_after_s=300)
    job_id = (await stack.create_job())["id"]
    if submit_first:
        assert await stack.services.runner.run_once() == 1
        [request] = stack.emulator.requests.values()
        await until(lambda: request.status is RequestStatus.COMPLETED)
    stack.clock.advance(119)
    assert await stack.services.reconciler.run_once() == ([], [])
    stack.clock.advance(1)
    assert await stack.services.reconciler.run_once() == ([], [job_id])
    failed = await stack.job(job_id)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "timeout"
    assert failed["completed_at"] is not None
    await stack.services.runner.run_once()
    if submit_first:
        assert request.output is not None
        assert await send_webhook(stack, job_id, request.request_id, request.output) == {"status": "recorded"}
        assert [kind for kind, _, _ in await events(stack, job_id)] == ["webhook"]
    else:
        assert stack.submits() == 0 and not stack.emulator.requests
    assert await stack.job(job_id) == failed


async def test_cancel_of_submitted_job_cancels_at_fal(clocked_stack: ClockedFactory) -> None:
    """Cancelling a submitted job PUTs fal's cancel URL; fal's later ERROR webhook leaves it cancelled."""
    stack = await clocked_stack(emulator_config=FalEmulatorConfig(queue_s=30, inference_s=0.01))
    job_id, request = await submitted(stack, until_status=RequestStatus.IN_QUEUE)
    response = await stack.client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert await stack.services.runner.run_once() == 2  # the cancel at fal and the job.cancelled notification
    assert polls(stack, request) == ["cancel"]
    assert request.cancel_requested
    assert request.status is RequestStatus.COMPLETED
    assert request.failure is not None and request.failure.error_type == "client_cancelled"
    await until(lambda: bool(request.deliveries))
    assert [(kind, outcome) for kind, _, outcome in await events(stack, job_id)] == [("webhook", "failed")]
    assert await stack.job(job_id) == cancelled
    tasks = await read_rows(
        stack.services.db.path, "SELECT kind, status FROM tasks WHERE job_id = ? ORDER BY id", job_id
    )
    assert [tuple(row) for row in tasks] == [("submit", "done"), ("notify", "done"), ("cancel", "done")]


async def test_timed_out_job_is_cancelled_at_fal(clocked_stack: ClockedFactory) -> None:
    """A job that times out while fal still has it queued gets a cancel sent to fal, so it stops costing."""
    stack = await clocked_stack(emulator_config=FalEmulatorConfig(queue_s=30, inference_s=0.01), job_timeout_s=60)
    job_id, request = await submitted(stack, until_status=RequestStatus.IN_QUEUE)
    stack.clock.advance(61)
    assert await stack.services.reconciler.run_once() == ([], [job_id])
    assert await stack.services.runner.run_once() == 2  # the cancel at fal and the job.failed notification
    assert polls(stack, request) == ["cancel"]
    assert request.cancel_requested
    assert (await stack.job(job_id))["error"]["code"] == "timeout"
