"""Provider limits set through their RECEIVER_* variables: submits per minute, jobs at once, poll gaps,
WaveSpeed resubmits and the synchronous call timeout, observed at the emulators on a hand-moved clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from receiver.emulators.fal import FalEmulatorConfig, RequestStatus
from receiver.emulators.wavespeed import WaveSpeedEmulatorConfig
from receiver.jobs.service import DEFER_S, RESUBMIT_DELAY_S
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.provider_webhooks import signed_fal_webhook
from tests.helpers.stack import FAST, ClockedFactory, ClockedStack, emulators
from tests.helpers.waiting import until

MODELS = {
    "fal": ("fal-ai/stepx-edit2", {"prompt": "red", "image_url": SMALL_PNG_URI}),
    "wavespeed": ("wavespeed-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI}),
    "stepfun": ("step-image-edit-2", {"prompt": "red", "image": SMALL_PNG_URI}),
    "modelverse": ("stepfun-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI}),
}
EDIT_PATHS = {"stepfun": "/stepfun/v1/images/edits", "modelverse": "/modelverse/v1/images/generations"}

# Settings not passed to the stack come from the environment: the variable under test.


async def create(stack: ClockedStack, provider: str) -> str:
    model, input = MODELS[provider]
    job: dict[str, Any] = await stack.create(provider, model, input)
    return str(job["id"])


def submits(stack: ClockedStack, provider: str) -> int:
    """Submits the provider's emulator has taken."""
    group = emulators(stack)
    counts = {
        "fal": len(group.fal.requests),
        "wavespeed": len(group.wavespeed.predictions),
        "stepfun": group.stepfun.calls,
        "modelverse": group.modelverse.calls,
    }
    return counts[provider]


def posts(stack: ClockedStack, path: str) -> int:
    """POSTs to `path` that reached the emulators (held ones included)."""
    return stack.emulator_calls.count(("POST", path))


async def submit_tasks(stack: ClockedStack, job_id: str) -> list[Any]:
    return [task for task in await stack.task_rows("submit") if task["job_id"] == job_id]


async def waits(stack: ClockedStack, job_id: str) -> bool:
    """The job's submit was put back for later: pending, due after now."""
    live = [task for task in await submit_tasks(stack, job_id) if task["status"] in ("pending", "leased")]
    return any(task["status"] == "pending" and task["run_at"] > stack.clock() for task in live)


async def waiting(stack: ClockedStack, job_ids: list[str]) -> list[str]:
    """Which of the jobs wait (`waits`)."""
    return [job_id for job_id in job_ids if await waits(stack, job_id)]


def hold_posts(stack: ClockedStack) -> None:
    """Hold every POST to the emulators (the synchronous edit calls) until `release_posts`."""
    assert stack.recorder is not None
    stack.recorder.hold = {"POST"}
    stack.recorder.gate.clear()


def release_posts(stack: ClockedStack) -> None:
    assert stack.recorder is not None
    stack.recorder.gate.set()


@pytest.mark.parametrize("provider", list(MODELS))
async def test_rate_per_min_holds_the_next_submit(
    clocked_stack: ClockedFactory, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    """RECEIVER_<PROVIDER>_RATE_PER_MIN=2: a third submit in the same minute waits, its job pending; it goes out
    once the minute since the first two has passed."""
    monkeypatch.setenv(f"RECEIVER_{provider.upper()}_RATE_PER_MIN", "2")
    stack = await clocked_stack(wavespeed_concurrency=0)
    job_ids = [await create(stack, provider) for _ in range(3)]
    assert await stack.services.runner.run_once() == 3
    assert submits(stack, provider) == 2
    [held] = await waiting(stack, job_ids)
    assert (await stack.job(held))["status"] == "pending"
    stack.clock.advance(59)  # the deferral is over, the minute is not
    await stack.services.runner.run_once()
    assert submits(stack, provider) == 2 and await waits(stack, held)
    stack.clock.advance(2)
    await stack.services.runner.run_once()
    assert submits(stack, provider) == 3
    assert (await stack.job(held))["status"] != "pending"


async def test_fal_concurrency_holds_the_next_job_until_one_finishes(
    clocked_stack: ClockedFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECEIVER_FAL_CONCURRENCY=1: a second job waits in pending while the first is at fal; once the first
    finishes (its webhook), the second is submitted."""
    monkeypatch.setenv("RECEIVER_FAL_CONCURRENCY", "1")
    stack = await clocked_stack(emulator_config=FalEmulatorConfig(**FAST, no_delivery=True))
    job_ids = [await create(stack, "fal") for _ in range(2)]
    assert await stack.services.runner.run_once() == 2
    assert submits(stack, "fal") == 1
    [held] = await waiting(stack, job_ids)
    [first] = [job_id for job_id in job_ids if job_id != held]
    stack.clock.advance(DEFER_S)
    await stack.services.runner.run_once()
    assert submits(stack, "fal") == 1 and await waits(stack, held)  # the first is still at fal
    [request] = stack.emulator.requests.values()
    await until(lambda: request.status is RequestStatus.COMPLETED)
    body, headers = signed_fal_webhook(stack.signing_key, request.request_id, request.output)
    token_path = (request.webhook_url or "").split("/webhooks/", 1)[1]
    response = await stack.client.post(f"/webhooks/{token_path}", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert (await stack.job(first))["status"] == "succeeded"
    stack.clock.advance(DEFER_S)
    await stack.services.runner.run_once()
    assert submits(stack, "fal") == 2
    assert (await stack.job(held))["status"] != "pending"


@pytest.mark.parametrize("provider", ["stepfun", "modelverse"])
async def test_sync_concurrency_holds_the_next_call_until_one_answers(
    clocked_stack: ClockedFactory, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    """RECEIVER_STEPFUN_CONCURRENCY=1 (Modelverse alike): while one synchronous call is in flight the next job
    waits in pending, and never reaches the provider; it is called once the first call has answered."""
    monkeypatch.setenv(f"RECEIVER_{provider.upper()}_CONCURRENCY", "1")
    stack = await clocked_stack()
    path = EDIT_PATHS[provider]
    hold_posts(stack)
    job_ids = [await create(stack, provider) for _ in range(2)]
    running = asyncio.create_task(stack.services.runner.run_once())

    async def one_called_one_waiting() -> bool:
        return posts(stack, path) == 1 and bool(await waiting(stack, job_ids))

    await until(one_called_one_waiting)
    [held] = await waiting(stack, job_ids)
    [first] = [job_id for job_id in job_ids if job_id != held]
    assert (await stack.job(first))["status"] == "running" and (await stack.job(held))["status"] == "pending"
    assert posts(stack, path) == 1
    release_posts(stack)
    assert await running == 2
    assert (await stack.job(first))["status"] == "succeeded"
    stack.clock.advance(DEFER_S)
    await stack.services.runner.run_once()
    assert posts(stack, path) == 2
    assert (await stack.job(held))["status"] == "succeeded"


async def test_poll_gaps_stop_growing_at_poll_max_interval(
    clocked_stack: ClockedFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECEIVER_POLL_MAX_INTERVAL_S=15: poll gaps of an unfinished job double from RECEIVER_POLL_INTERVAL_S=10
    and then stay at 15 s."""
    monkeypatch.setenv("RECEIVER_POLL_MAX_INTERVAL_S", "15")
    fal = FalEmulatorConfig(queue_s=30, no_delivery=True)
    stack = await clocked_stack(emulator_config=fal, reconcile_after_s=5, poll_interval_s=10)
    job_id = await create(stack, "fal")
    assert await stack.services.runner.run_once() == 1
    reconciler, runner = stack.services.reconciler, stack.services.runner
    for gap in [5, 10, 15, 15]:
        stack.clock.advance(gap - 1)
        assert await reconciler.run_once() == ([], [])
        stack.clock.advance(1)
        assert await reconciler.run_once() == ([job_id], [])
        assert await runner.run_once() == 1
    assert (await stack.job(job_id))["status"] == "submitted"


async def test_wavespeed_max_attempts_exhausted_fails_the_job(
    clocked_stack: ClockedFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECEIVER_WAVESPEED_MAX_ATTEMPTS=2: a job whose predictions keep failing with a retryable 5xxx code is
    submitted twice, then failed with WaveSpeed's code; no third prediction."""
    monkeypatch.setenv("RECEIVER_WAVESPEED_MAX_ATTEMPTS", "2")
    wavespeed = WaveSpeedEmulatorConfig(**FAST, task_error_code=5003, task_error_count=100)
    stack = await clocked_stack(wavespeed_config=wavespeed)
    job_id = await create(stack, "wavespeed")
    runner, predictions = stack.services.runner, emulators(stack).wavespeed.predictions
    for attempt in (1, 2):
        assert await runner.run_once() == 1  # the submit
        assert submits(stack, "wavespeed") == attempt
        [prediction] = [p for p in predictions.values() if p.id == (await stack.job(job_id))["provider_request_id"]]
        await until(lambda p=prediction: p.delivery_state == "delivered")  # its failure webhook is recorded
        assert await runner.run_once() == 1  # the poll the webhook asked for reads the 5003
        if attempt == 1:
            assert await waits(stack, job_id)  # a fresh submit, after the resubmit delay
            stack.clock.advance(RESUBMIT_DELAY_S)
    job = await stack.job(job_id)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "wavespeed_5003" and "after 2 attempts" in job["error"]["message"]
    assert [task["status"] for task in await submit_tasks(stack, job_id)] == ["done", "done"]
    stack.clock.advance(3600)
    await runner.run_once()
    assert submits(stack, "wavespeed") == 2


@pytest.mark.parametrize("provider", ["stepfun", "modelverse"])
async def test_sync_timeout_fails_the_job_without_a_second_call(clocked_stack: ClockedFactory, provider: str) -> None:
    """RECEIVER_SYNC_TIMEOUT_S bounds a synchronous call: a provider that never answers fails the job as
    outcome-unknown after that long, and it is never called twice. (The field's floor is 120 s; the test sets
    0.5 s on the Settings object it hands to the wiring.)"""
    stack = await clocked_stack(unchecked={"sync_timeout_s": 0.5})
    path = EDIT_PATHS[provider]
    hold_posts(stack)  # never released: only the timeout can end the call
    job_id = await create(stack, provider)
    assert await asyncio.wait_for(stack.services.runner.run_once(), timeout=10) == 1
    job = await stack.job(job_id)
    assert (job["status"], job["error"]["code"]) == ("failed", "provider_outcome_unknown")
    stack.clock.advance(3600)
    await stack.services.runner.run_once()
    assert posts(stack, path) == 1
