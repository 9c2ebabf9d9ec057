"""The fal emulator's shutdown never leaves a synchronous (fal.run) caller waiting."""

from __future__ import annotations

import asyncio

from receiver.emulators.fal import FalEmulator, FalEmulatorConfig, RequestStatus
from receiver.emulators.fal.models import EditPlan


async def test_shutdown_before_a_request_starts_still_releases_its_caller() -> None:
    """A request whose task is cancelled (shutdown) before it ever ran still sets `first_attempt_done`, which
    the fal.run route waits on before it answers (503 runner_disconnected)."""
    emulator = FalEmulator(FalEmulatorConfig(queue_s=30))
    plan = EditPlan("fal-ai/stepx-edit2", "make it red", "data:,", "jpeg", None, 1, None)
    request = emulator.submit(
        model_id=plan.model_id, app_id=plan.model_id, plan=plan, webhook_url=None, base_url="http://127.0.0.1:9"
    )
    await emulator.aclose()  # no await between submit and shutdown: the request's task never took a step
    await asyncio.wait_for(request.first_attempt_done.wait(), timeout=5)
    assert request.status is not RequestStatus.COMPLETED  # the route then answers 503, never hangs
