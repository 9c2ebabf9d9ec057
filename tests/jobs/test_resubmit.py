"""A WaveSpeed prediction given up on for a fresh one (5xxx): its late events are kept but never steer the job."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import receiver.jobs.service
from receiver.emulators import WaveSpeedEmulator, WaveSpeedEmulatorConfig
from receiver.emulators.wavespeed.delivery import webhook_body
from receiver.ingest.signatures import sign_wavespeed
from receiver.web.asgi_server import running_server
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.stack import FAST, STEP1X, RecordingApp, Stack, StackFactory, emulators
from tests.helpers.waiting import until

INPUT = {"prompt": "red", "image": SMALL_PNG_URI}


async def post_webhook(stack: Stack, emulator: WaveSpeedEmulator, prediction_id: str) -> Any:
    """Deliver a prediction's documented webhook, signed as WaveSpeed signs it, to the URL it was given."""
    prediction = emulator.predictions[prediction_id]
    assert prediction.webhook_url is not None
    body = webhook_body(prediction)
    headers = sign_wavespeed(
        emulator.config.webhook_secret, webhook_id=uuid.uuid4().hex, timestamp=int(time.time()), body=body
    )
    return await stack.client.post(prediction.webhook_url.removeprefix(stack.url), content=body, headers=headers)


async def test_late_webhook_of_a_superseded_prediction_does_not_hijack_the_retry(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll sees prediction 1 fail with 5000 and queues a fresh one; prediction 1's webhook then arrives late,
    before the fresh submit: it is recorded, but the job follows prediction 2 to its end (no hang)."""
    monkeypatch.setattr(receiver.jobs.service, "RESUBMIT_DELAY_S", 2.0)
    config = WaveSpeedEmulatorConfig(**FAST, task_error_code=5000, task_error_count=1, late_delivery_s=1.0)
    stack = await make_stack(wavespeed_config=config, wavespeed_poll_after_s=0.3, wavespeed_poll_interval_s=0.3)
    job = await stack.create("wavespeed", STEP1X, INPUT)
    final = await stack.wait_final(job["id"], timeout_s=20)
    emulator = emulators(stack).wavespeed
    first, second = emulator.predictions
    assert final["status"] == "succeeded", final
    assert final["provider_request_id"] == second
    assert emulator.predictions[first].deliveries[0].status_code == 200  # recorded, so WaveSpeed stops retrying
    events = await stack.services.store.list_inbox_for_job(job["id"])
    assert [(event["kind"], event["dedup_key"]) for event in events if event["dedup_key"] == first] == [
        ("poll", first),
        ("webhook", first),
    ]


@pytest.fixture
async def gated_wavespeed() -> AsyncIterator[tuple[WaveSpeedEmulator, RecordingApp, str]]:
    """A WaveSpeed emulator (no webhooks of its own) behind a gate that can hold its submits."""
    emulator = WaveSpeedEmulator(WaveSpeedEmulatorConfig(**FAST, task_error_code=5000, no_delivery=True))
    recorder = RecordingApp(emulator.app)
    async with running_server(recorder) as url:
        yield emulator, recorder, url
    await emulator.aclose()


async def test_late_webhook_during_the_fresh_submit_leaves_the_fresh_prediction_bound(
    make_stack: StackFactory,
    monkeypatch: pytest.MonkeyPatch,
    gated_wavespeed: tuple[WaveSpeedEmulator, RecordingApp, str],
) -> None:
    """Prediction 1's late failure webhook lands while the fresh submit is on the wire: it is answered
    `recorded`, and the job is bound to prediction 2 (the one just paid for), which then finishes it."""
    monkeypatch.setattr(receiver.jobs.service, "RESUBMIT_DELAY_S", 0.0)
    emulator, recorder, url = gated_wavespeed
    stack = await make_stack(workers=False, wavespeed_url=url, wavespeed_poll_after_s=0.01)
    runner, reconciler = stack.services.runner, stack.services.reconciler
    job = await stack.create("wavespeed", STEP1X, INPUT)
    assert await runner.run_once() == 1
    [first] = emulator.predictions
    await until(lambda: emulator.predictions[first].status.value == "failed")
    await reconciler.run_once()
    assert await runner.run_once() == 1  # the poll reads code 5000: a fresh submit is queued
    recorder.gate.clear()
    submitting = asyncio.create_task(runner.run_once())
    await until(lambda: recorder.calls.count(("POST", f"/api/v3/{STEP1X}")) == 2)
    response = await post_webhook(stack, emulator, first)
    assert (response.status_code, response.json()) == (200, {"status": "recorded"})
    recorder.gate.set()
    await submitting
    [_, second] = emulator.predictions
    bound = await stack.job(job["id"])
    assert (bound["status"], bound["provider_request_id"]) == ("submitted", second)

    async def finished() -> bool:
        await reconciler.run_once()
        await runner.run_once()
        return (await stack.job(job["id"]))["status"] == "succeeded"

    await until(finished)
    assert (await stack.job(job["id"]))["provider_request_id"] == second
    assert len(emulator.predictions) == 2
