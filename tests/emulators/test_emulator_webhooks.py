"""Webhook delivery as the fal and WaveSpeed emulators share it (one sender): what is sent, retried, given up on
or held back, the same for both."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.helpers.queue_emulators import QueueHarness, fal_harness, wavespeed_harness
from tests.helpers.servers import SwitchedServers

# Tests sharing the module-scoped servers run on the module's event loop.
on_shared_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", params=[fal_harness, wavespeed_harness], ids=["fal", "wavespeed"])
async def harness(request: pytest.FixtureRequest, servers: SwitchedServers) -> AsyncIterator[QueueHarness]:
    async with request.param(servers) as harness:
        yield harness


@on_shared_loop
async def test_no_webhook_requested_sends_nothing(harness: QueueHarness) -> None:
    """A submit without a webhook URL (fal's `fal_webhook`, WaveSpeed's `webhook`) completes and sends nothing."""
    state = await harness.settled(await harness.submit(webhook=False))
    assert state.delivery_state == "not_requested"
    assert harness.receiver.hooks == []


@on_shared_loop
async def test_no_delivery_sends_nothing(harness: QueueHarness) -> None:
    """no_delivery: the job completes but no webhook is attempted."""
    harness.configure(no_delivery=True)
    submitted = await harness.submit()
    await harness.completes(submitted)
    state = await harness.settled(submitted)
    assert (state.delivery_state, state.deliveries) == ("suppressed", [])
    assert harness.receiver.hooks == []


@on_shared_loop
async def test_a_redirect_is_a_failed_attempt_and_not_followed(harness: QueueHarness) -> None:
    """A 3xx answer counts as a failure, its Location is never fetched, and the next try succeeds."""
    harness.receiver.answers = [307]
    state = await harness.settled(await harness.submit())
    assert [a.status_code for a in state.deliveries] == [307, 200]
    assert harness.receiver.redirect_hits == 0


@on_shared_loop
async def test_gives_up_after_max_attempts(harness: QueueHarness) -> None:
    """A receiver that always fails gets exactly max_attempts tries."""
    harness.configure(max_attempts=3)
    harness.receiver.answers = [500] * 5
    state = await harness.settled(await harness.submit())
    assert [a.attempt for a in state.deliveries] == [1, 2, 3]
    assert state.delivery_state == "gave_up"


@on_shared_loop
async def test_unreachable_receiver_records_the_error(harness: QueueHarness) -> None:
    """A connection failure is recorded as an attempt with an error and no status code."""
    harness.configure(max_attempts=2)
    state = await harness.settled(await harness.submit(webhook_url="http://127.0.0.1:9/", prompt="x"))
    assert [a.status_code for a in state.deliveries] == [None, None]
    assert all(a.error for a in state.deliveries)


@on_shared_loop
async def test_late_delivery_waits_before_the_first_try(harness: QueueHarness) -> None:
    """late_delivery_s delays the first attempt past the completion."""
    harness.configure(late_delivery_s=0.05)
    state = await harness.settled(await harness.submit())
    assert state.completed_at is not None
    assert state.deliveries[0].at - state.completed_at >= 0.05
