"""Submitting jobs to the fal emulator over real HTTP: success, retries, refusals and ambiguous outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from receiver.emulators.fal import FalEmulatorConfig
from receiver.providers.fal import is_ingress_error
from tests.helpers.database import read_rows
from tests.helpers.servers import refusing_url
from tests.helpers.stack import FAST, STEPX, ClockedFactory, StackFactory
from tests.helpers.waiting import until

SDXL = "fal-ai/fast-sdxl/image-to-image"


@contextlib.asynccontextmanager
async def hang_up_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A TCP server on loopback that reads one whole HTTP request per connection, then closes without answering."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            received.append(head + body)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("model", "app_path"),
    [(STEPX, "fal-ai/stepx-edit2"), (SDXL, "fal-ai/fast-sdxl")],
    ids=["two-part-id", "sub-path-id"],
)
async def test_submit_records_request_id_and_queue_urls(
    clocked_stack: ClockedFactory, model: str, app_path: str
) -> None:
    """A successful submit binds fal's request id, its owner/app queue URLs and `submitted_at`."""
    stack = await clocked_stack(emulator_config=FalEmulatorConfig(**FAST, no_delivery=True))
    job = await stack.create_job(model)
    assert job["submitted_at"] is None and job["provider_request_id"] is None
    assert await stack.services.runner.run_once() == 1
    submitted = await stack.job(job["id"])
    [request_id] = stack.emulator.requests
    assert submitted["status"] == "submitted"
    assert submitted["provider_request_id"] == request_id
    assert submitted["submitted_at"] is not None
    assert submitted["error"] is None
    base = f"{stack.emulator_url}/fal/{app_path}/requests/{request_id}"
    stored = await stack.services.store.select_job(job["id"])
    assert stored.provider_urls == {
        "status_url": f"{base}/status",
        "response_url": base,
        "cancel_url": f"{base}/cancel",
    }
    assert stack.emulator.requests[request_id].webhook_url == stack.services.jobs.webhook_url(stored)
    assert stack.submits(model) == 1
    assert [row["status"] for row in await stack.task_rows()] == ["done"]


async def test_submit_sends_the_key_and_the_input_unchanged(clocked_stack: ClockedFactory) -> None:
    """The submit carries `Authorization: Key <FAL_KEY>` (the emulator checks it) and the caller's input as given."""
    stack = await clocked_stack(emulator_config=FalEmulatorConfig(**FAST, api_key="test-fal-key", no_delivery=True))
    job = await stack.create_job(seed=7, output_format="png")
    await stack.services.runner.run_once()
    [request] = stack.emulator.requests.values()
    assert (await stack.job(job["id"]))["status"] == "submitted"
    assert (request.plan.seed, request.plan.output_format, request.plan.prompt) == (7, "png", "make it red")


async def test_transient_submit_failures_are_retried_with_backoff(clocked_stack: ClockedFactory) -> None:
    """429, then a 503 from fal's ingress (nginx page, no X-Fal-Request-Id), are retried after a backoff delay;
    the third submit is accepted and the job succeeds."""
    config = FalEmulatorConfig(**FAST, submit_failures=[429, 503], ingress_failures=True)
    stack = await clocked_stack(emulator_config=config)
    job = await stack.create_job()
    runner = stack.services.runner
    for attempt, status in enumerate([429, 503], start=1):
        assert await runner.run_once() == 1
        [task] = await stack.task_rows()
        assert (task["status"], task["attempts"]) == ("pending", attempt)
        assert f"fal answered {status}" in task["last_error"]
        assert (await stack.job(job["id"]))["status"] == "pending"
        assert 0 <= task["run_at"] - stack.clock.now <= 2 ** (attempt - 1)  # jittered, doubling ceiling
        stack.clock.now = task["run_at"]
    assert await runner.run_once() == 1
    assert stack.submits() == 3
    final = await stack.wait_final(job["id"])
    assert final["status"] == "succeeded", final["error"]
    assert len(stack.emulator.requests) == 1


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_ingress_gateway_errors_are_resent(clocked_stack: ClockedFactory, status: int) -> None:
    """A 502/503/504 nginx page without X-Fal-Request-Id never reached fal's queue: the submit is sent again."""
    config = FalEmulatorConfig(**FAST, submit_failures=[status], ingress_failures=True, no_delivery=True)
    stack = await clocked_stack(emulator_config=config)
    job = await stack.create_job()
    assert await stack.services.runner.run_once() == 1
    [task] = await stack.task_rows()
    assert (task["status"], task["attempts"]) == ("pending", 1)
    assert f"fal answered {status}" in task["last_error"]
    stack.clock.now = task["run_at"]
    assert await stack.services.runner.run_once() == 1
    assert stack.submits() == 2
    assert (await stack.job(job["id"]))["provider_request_id"] == next(iter(stack.emulator.requests))


@pytest.mark.parametrize(
    ("status", "ingress"),
    [(500, False), (502, False), (503, False), (504, False), (500, True)],
    ids=["500", "502", "503", "504", "500-nginx-page"],
)
async def test_server_errors_after_sending_are_not_resent(
    clocked_stack: ClockedFactory, status: int, ingress: bool
) -> None:
    """A 5xx that is not an ingress error (fal's own JSON error, or a 500 even as an nginx page) may follow a
    queued, billed job: the submit is never sent again and the job waits with provider_outcome_unknown."""
    config = FalEmulatorConfig(**FAST, submit_failures=[status], ingress_failures=ingress)
    stack = await clocked_stack(emulator_config=config)
    job = await stack.create_job()
    assert await stack.services.runner.run_once() == 1
    stack.clock.advance(3600)
    for _ in range(3):
        assert await stack.services.runner.run_once() == 0
    assert stack.submits() == 1
    after = await stack.job(job["id"])
    assert (after["status"], after["provider_request_id"]) == ("submitted", None)
    assert after["error"]["code"] == "provider_outcome_unknown"
    assert f"fal answered {status}" in after["error"]["message"] and "not resent" in after["error"]["message"]
    assert [(row["status"], row["attempts"]) for row in await stack.task_rows()] == [("done", 1)]


def test_ingress_error_needs_the_nginx_page_and_no_request_id() -> None:
    """fal's heuristic, exactly: a 502/503/504 is an ingress error only with "nginx" in the body and no
    X-Fal-Request-Id header (fal's own server sets it)."""
    page = "<html><center>nginx</center></html>"
    assert is_ingress_error(httpx.Response(502, text=page))
    assert not is_ingress_error(httpx.Response(502, text=page, headers={"X-Fal-Request-Id": "r1"}))
    assert not is_ingress_error(httpx.Response(503, json={"detail": "Runner scheduling failure"}))
    assert not is_ingress_error(httpx.Response(500, text=page))


async def test_wrong_api_key_fails_the_job_without_retrying(clocked_stack: ClockedFactory) -> None:
    """fal's 401 fails the job with code provider_auth at once; the submit is never sent again."""
    stack = await clocked_stack(emulator_config=FalEmulatorConfig(**FAST, api_key="another-key"))
    job = await stack.create_job()
    assert await stack.services.runner.run_once() == 1
    failed = await stack.job(job["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "provider_auth"
    assert "Unauthorized" in failed["error"]["message"]
    assert "test-fal-key" not in json.dumps(failed)
    stack.clock.advance(3600)
    assert await stack.services.runner.run_once() == 1  # the job.failed notification, no second submit
    assert await stack.services.runner.run_once() == 0
    assert stack.submits() == 1
    assert [(row["status"], row["attempts"]) for row in await stack.task_rows()] == [("done", 1)]


async def test_input_fal_rejects_fails_the_job(clocked_stack: ClockedFactory) -> None:
    """A 422 from fal on submit fails the job with code provider_rejected and fal's validation text; no retry."""
    stack = await clocked_stack()
    # Valid for the receiver's schema of this model, refused by the emulator (its sizes stop at 4096).
    job = await stack.create_job(SDXL, image_size={"width": 5000, "height": 64})
    assert await stack.services.runner.run_once() == 1
    failed = await stack.job(job["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "provider_rejected"
    assert "body.image_size" in failed["error"]["message"]
    assert stack.submits(SDXL) == 1


async def test_model_error_fails_the_job_with_fals_error(make_stack: StackFactory) -> None:
    """A model failure ends the job failed with fal's error text and the model's validation detail."""
    stack = await make_stack(emulator_config=FalEmulatorConfig(**FAST, model_error=True))
    job = await stack.create_job()
    final = await stack.wait_final(job["id"])
    assert final["status"] == "failed"
    assert final["error"]["code"] == "provider_error"
    assert final["error"]["message"] == "Invalid status code: 422"
    [detail] = final["error"]["details"]["detail"]
    assert detail["msg"].startswith("Emulated model failure")
    assert final["result"] is None and final["completed_at"] is not None


async def test_connection_dropped_after_sending_is_not_resubmitted(clocked_stack: ClockedFactory) -> None:
    """A submit whose connection drops after the request went out is never resent: its outcome is unknown."""
    async with hang_up_server() as (url, received):
        stack = await clocked_stack(fal_queue_url=url)
        job = await stack.create_job()
        assert await stack.services.runner.run_once() == 1
        stack.clock.advance(3600)
        for _ in range(3):
            assert await stack.services.runner.run_once() == 0
        assert len(received) == 1
        assert received[0].startswith(b"POST /fal-ai/stepx-edit2?fal_webhook=")
    after = await stack.job(job["id"])
    assert after["status"] == "submitted"
    assert after["provider_request_id"] is None
    assert after["error"]["code"] == "provider_outcome_unknown"
    assert "not resent" in after["error"]["message"]
    assert "token" not in after["error"]["message"]  # the webhook URL we sent carries the job's token
    assert [row["status"] for row in await stack.task_rows()] == ["done"]


async def test_connection_refused_is_retried(clocked_stack: ClockedFactory) -> None:
    """A refused connection never reached fal, so the submit task goes back to the queue and the job stays pending."""
    with refusing_url() as url:
        stack = await clocked_stack(fal_queue_url=url)
        job = await stack.create_job()
        assert await stack.services.runner.run_once() == 1
    [task] = await stack.task_rows()
    assert (task["status"], task["attempts"]) == ("pending", 1)
    assert task["last_error"].startswith("provider_unreachable")
    assert "token" not in task["last_error"]
    pending = await stack.job(job["id"])
    assert pending["status"] == "pending"
    assert pending["error"] is None and pending["submitted_at"] is None


async def test_refused_until_the_budget_is_spent_fails_the_job(clocked_stack: ClockedFactory) -> None:
    """A submit refused on every attempt is dead-lettered after its budget and the job fails with submit_failed."""
    with refusing_url() as url:
        stack = await clocked_stack(fal_queue_url=url)
        job = await stack.create_job()
        for _ in range(8):
            assert await stack.services.runner.run_once() == 1
            stack.clock.advance(120)
        assert await stack.services.runner.run_once() == 1  # the job.failed notification, no ninth submit
        assert await stack.services.runner.run_once() == 0
    [task] = await stack.task_rows()
    assert (task["status"], task["attempts"]) == ("dead", 8)
    failed = await stack.job(job["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "submit_failed"


async def test_submit_interrupted_before_its_call_is_sent_once(clocked_stack: ClockedFactory) -> None:
    """A submit task whose runner died before it took a provider slot never reached the provider: the
    task taken over sends it, once, and the job runs normally."""
    stack = await clocked_stack()
    job = await stack.create_job()
    outbox = stack.services.outbox
    [claimed] = await outbox.claim_tasks(owner="dead-runner", limit=1, lease_s=0.0, now=stack.clock())
    assert claimed.kind == "submit"
    assert await stack.services.runner.run_once() == 1
    after = await stack.job(job["id"])
    assert after["status"] == "submitted" and after["error"] is None
    assert after["provider_request_id"] is not None
    assert stack.submits() == 1
    [task] = await stack.task_rows()
    assert (task["status"], task["interrupted"], task["attempts"]) == ("done", 1, 2)


@pytest.mark.parametrize(
    ("model_error", "status"),
    [(False, "succeeded"), (True, "failed")],
    ids=["ok", "model-error"],
)
async def test_webhook_before_submit_response(make_stack: StackFactory, model_error: bool, status: str) -> None:
    """A webhook that lands before the submit returns binds the signed request id and finalizes the job once."""
    config = FalEmulatorConfig(**FAST, webhook_before_response=True, model_error=model_error)
    stack = await make_stack(emulator_config=config)
    job = await stack.create_job()
    final = await stack.wait_final(job["id"])
    await stack.wait_for(job["id"], lambda job: job["submitted_at"] is not None)
    [request_id] = stack.emulator.requests
    after = await stack.job(job["id"])
    assert after["status"] == status
    assert after["provider_request_id"] == request_id
    assert after["result"] == final["result"] and after["completed_at"] == final["completed_at"]
    assert after["error"] == final["error"]  # the late submit answer does not touch the final job
    assert (after["error"] is None) is (not model_error)
    events = await stack.services.store.list_inbox_for_job(job["id"])
    assert [(event["kind"], event["dedup_key"]) for event in events] == [("webhook", request_id)]
    tasks = await read_rows(
        stack.services.db.path,
        "SELECT kind, status FROM tasks WHERE job_id = ? AND kind IN ('submit', 'poll', 'cancel')",
        job["id"],
    )
    assert [tuple(row) for row in tasks] == [("submit", "done")]


async def test_cancel_while_submit_is_in_flight_cancels_at_fal(clocked_stack: ClockedFactory) -> None:
    """A job cancelled while its submit is on the wire stays cancelled, and fal is asked to cancel once it answers."""
    stack = await clocked_stack(emulator_config=FalEmulatorConfig(queue_s=30, no_delivery=True))
    assert stack.recorder is not None
    job = await stack.create_job()
    stack.recorder.gate.clear()
    submitting = asyncio.create_task(stack.services.runner.run_once())
    await until(lambda: stack.submits() == 1)
    cancelled = await stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 202
    stack.recorder.gate.set()
    assert await submitting == 1
    after = await stack.job(job["id"])
    [request_id] = stack.emulator.requests
    assert after["status"] == "cancelled"
    assert after["provider_request_id"] == request_id
    assert after["error"]["code"] == "cancelled"
    assert await stack.services.runner.run_once() == 2  # the cancel at fal and the job.cancelled notification
    assert ("PUT", f"/fal/fal-ai/stepx-edit2/requests/{request_id}/cancel") in stack.emulator_calls
    request = stack.emulator.requests[request_id]
    assert request.cancel_requested and request.failure is not None
    assert request.failure.error_type == "client_cancelled"
    assert await stack.job(job["id"]) == after
