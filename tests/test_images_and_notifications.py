"""What follows a final job, over real HTTP: its images into our store, signed notifications, retries, replay, SSE;
on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from receiver.emulators.chat import ChatEmulator
from receiver.web.asgi_server import running_server
from tests.helpers.database import event_types
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.receivers import HookReceiver
from tests.helpers.stack import ON_BOTH_BACKENDS, Stack, StackFactory, subscribe
from tests.helpers.streams import open_stream, read_until
from tests.helpers.waiting import until

pytestmark = ON_BOTH_BACKENDS

FAST = {"notify_retry_scale": 0.0001}


async def deliveries(stack: Stack, **params: str) -> list[dict[str, Any]]:
    response = await stack.client.get("/v1/deliveries", params=params)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["deliveries"]
    return rows


async def settled_delivery(stack: Stack, job_id: str) -> dict[str, Any]:
    """The job's one delivery once delivered (the receiver records an answer just after the hook sent it)."""
    for _ in range(200):
        [delivery] = await deliveries(stack, job_id=job_id)
        if delivery["status"] == "delivered":
            break
        await asyncio.sleep(0.02)
    return delivery


async def test_images_stored_and_one_signed_success_per_job(make_stack: StackFactory, hook: HookReceiver) -> None:
    """A finished job's images are in our store, and the subscriber gets one correctly signed job.succeeded."""
    stack = await make_stack(**FAST)
    sub = await subscribe(stack, {"kind": "webhook", "url": hook.url, "events": ["job.succeeded"]})
    job = await stack.create_job()
    final = await stack.wait_final(job["id"])
    await until(lambda: len(hook.hooks) == 1)
    headers, body = hook.hooks[0].headers, hook.hooks[0].body
    Webhook(sub["secret"]).verify(body, headers)  # the independent Standard Webhooks oracle
    event = json.loads(body)
    assert event["type"] == "job.succeeded" and event["schema_version"] == 1
    stored = event["data"]["job"]["images"]
    assert len(stored) == 1 and stored[0]["width"] == 8
    job_view = await stack.job(job["id"])
    assert job_view["images_status"] == "stored" and job_view["images"] == stored
    assert job_view["input_image"]["sha256"]
    async with httpx.AsyncClient() as http:
        image = await http.get(stored[0]["url"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert "immutable" in image.headers["cache-control"]
        thumb = await http.get(stored[0]["thumbnail_url"])
        assert thumb.headers["content-type"] == "image/webp"
    assert final["status"] == "succeeded"
    delivery = await settled_delivery(stack, job["id"])
    assert delivery["status"] == "delivered" and delivery["attempts"] == 1
    assert headers["webhook-id"] == delivery["webhook_id"]


async def test_failing_target_is_retried_then_delivered_once(make_stack: StackFactory, hook: HookReceiver) -> None:
    """500, 503 with Retry-After 0, then 200: delivered once, every attempt logged, the same webhook-id."""
    stack = await make_stack(**FAST)
    hook.answers = [500, 503]
    await subscribe(stack, {"kind": "webhook", "url": hook.url})
    job = await stack.create_job()
    await stack.wait_final(job["id"])
    await until(lambda: len(hook.hooks) == 3)
    delivery = await settled_delivery(stack, job["id"])
    assert {received.headers["webhook-id"] for received in hook.hooks} == {delivery["webhook_id"]}
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 503, 200]
    assert delivery["status"] == "delivered"


async def test_dead_delivery_is_replayed_with_the_same_webhook_id(make_stack: StackFactory, hook: HookReceiver) -> None:
    """A target failing through the whole schedule ends dead; a replay delivers it with the same webhook-id."""
    stack = await make_stack(**FAST)
    hook.answers = [500] * 8  # the schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h
    sub = await subscribe(stack, {"kind": "webhook", "url": hook.url, "events": ["job.succeeded"]})
    job = await stack.create_job()
    await stack.wait_final(job["id"])
    await until(lambda: len(hook.hooks) == 8, timeout_s=30)
    rows = await deliveries(stack, status="dead")
    for _ in range(100):
        if rows:
            break
        await asyncio.sleep(0.05)
        rows = await deliveries(stack, status="dead")
    [dead] = rows
    assert dead["attempts"] == 8
    replay = await stack.client.post("/v1/deliveries/replay", json={"subscription_id": sub["id"], "status": "dead"})
    assert replay.status_code == 202 and replay.json() == {"requeued": 1}
    await until(lambda: len(hook.hooks) == 9)
    assert hook.hooks[-1].headers["webhook-id"] == dead["webhook_id"]
    [after] = await deliveries(stack, job_id=job["id"])
    for _ in range(100):
        if after["status"] == "delivered":
            break
        await asyncio.sleep(0.05)
        [after] = await deliveries(stack, job_id=job["id"])
    assert after["status"] == "delivered"


async def test_gone_target_disables_the_subscription(make_stack: StackFactory, hook: HookReceiver) -> None:
    """A 410 marks the delivery dead and disables the subscription, visibly."""
    stack = await make_stack(**FAST)
    hook.answers = [410]
    sub = await subscribe(stack, {"kind": "webhook", "url": hook.url})
    job = await stack.create_job()
    await stack.wait_final(job["id"])
    for _ in range(200):
        listed = (await stack.client.get("/v1/subscriptions")).json()["subscriptions"]
        if listed[0]["status"] == "disabled":
            break
        await asyncio.sleep(0.05)
    assert listed[0]["id"] == sub["id"] and listed[0]["status"] == "disabled"
    assert "gone" in listed[0]["disabled_reason"]
    assert "secret" not in listed[0]


async def test_callback_url_and_failure_event(make_stack: StackFactory, hook: HookReceiver) -> None:
    """A job's callback_url gets its job.failed, signed with the callback secret."""
    stack = await make_stack(**FAST)
    stack.emulator.config.model_error = True
    body = {"provider": "fal", "model": "fal-ai/stepx-edit2", "callback_url": hook.url}
    body["input"] = {"prompt": "red", "image_url": "https://example.invalid/x.png"}
    response = await stack.client.post("/v1/jobs", json=body)
    job = response.json()
    assert (await stack.wait_final(job["id"]))["status"] == "failed"
    await until(lambda: len(hook.hooks) == 1)
    secret = (await stack.client.get("/v1/callback-secret")).json()["secret"]
    headers, raw = hook.hooks[0].headers, hook.hooks[0].body
    Webhook(secret).verify(raw, headers)
    assert json.loads(raw)["type"] == "job.failed"


async def test_filters_select_subscribers(make_stack: StackFactory, hook: HookReceiver) -> None:
    """A subscription filtered on metadata only hears about matching jobs."""
    stack = await make_stack(**FAST)
    await subscribe(stack, {"kind": "webhook", "url": hook.url, "filter": {"metadata": {"team": "a"}}})
    ids = {}
    for team in ("a", "b"):
        body = {"provider": "fal", "model": "fal-ai/stepx-edit2", "metadata": {"team": team}}
        body["input"] = {"prompt": "red", "image_url": stack_image()}
        job = (await stack.client.post("/v1/jobs", json=body)).json()
        await stack.wait_final(job["id"])
        ids[team] = job["id"]
    await until(lambda: len(hook.hooks) >= 1)
    # An event and the deliveries it makes are written in one transaction: once team b's event is recorded,
    # every delivery it will ever get exists.
    await until(lambda: event_types(stack.database, ids["b"]) == ["job.succeeded"])
    assert await deliveries(stack, job_id=ids["b"]) == []
    assert len(await deliveries(stack, job_id=ids["a"])) == 1
    assert [e["data"]["job"]["metadata"]["team"] for e in hook.events()] == ["a"]


def stack_image() -> str:

    return SMALL_PNG_URI


async def test_chat_targets_get_their_shapes(make_stack: StackFactory) -> None:
    """Slack gets text + an image block, Discord an embed + the file, Telegram sendPhoto with the bytes."""
    chat = ChatEmulator()
    async with running_server(chat.app) as chat_url:
        stack = await make_stack(telegram_api_url=f"{chat_url}/telegram", **FAST)
        await subscribe(stack, {"kind": "slack", "url": f"{chat_url}/slack/services/T/B/X"})
        await subscribe(stack, {"kind": "discord", "url": f"{chat_url}/discord/api/webhooks/1/abc"})
        token = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"  # the shape of Telegram's documented example
        await subscribe(stack, {"kind": "telegram", "bot_token": token, "chat_id": "42"})
        job = await stack.create_job()
        await stack.wait_final(job["id"])
        await until(lambda: len(chat.received) == 3)
    services = {request.service: request for request in chat.received}
    stored = (await stack.job(job["id"]))["images"][0]
    slack = services["slack"].json
    assert any(block["type"] == "image" and block["image_url"] == stored["url"] for block in slack["blocks"])
    discord_file = next(iter(services["discord"].files.values()))
    telegram_photo = services["telegram"].files["photo"]
    async with httpx.AsyncClient() as http:
        original = (await http.get(stored["url"])).content
    assert discord_file[2] == original and telegram_photo[2] == original
    assert services["telegram"].form["chat_id"] == "42"


async def test_stream_resumes_from_last_event_id(make_stack: StackFactory) -> None:
    """GET /v1/stream sends job events as SSE (Last-Event-ID 0: from the start); reconnecting with
    Last-Event-ID resumes after it."""
    stack = await make_stack(stream_ping_s=0.05, **FAST)
    first = await stack.create_job()
    await stack.wait_final(first["id"])
    async with open_stream(stack, last_event_id="0") as lines:
        seen = await read_until(lines, first["id"])  # the event's data line, after its id and event lines
    ids = [int(line[4:]) for line in seen if line.startswith("id: ")]
    assert ids and "event: job.succeeded" in seen
    second = await stack.create_job()
    await stack.wait_final(second["id"])
    async with open_stream(stack, last_event_id=str(ids[-1])) as lines:
        resumed = await read_until(lines, second["id"])
        resumed += await read_until(lines, ": ping")
    assert not any(first["id"] in line for line in resumed)


async def test_killed_runner_task_is_taken_over_once(make_stack: StackFactory, hook: HookReceiver) -> None:
    """A deliver task leased by a runner that died is taken over after its lease and delivered once."""
    stack = await make_stack(workers=False, **FAST)
    await subscribe(stack, {"kind": "webhook", "url": hook.url})
    job = await stack.create_job()
    runner, outbox = stack.services.runner, stack.services.outbox
    assert await runner.run_once() == 1  # the submit; the emulator's webhook then finalizes the job
    await stack.wait_for(job["id"], lambda j: j["status"] == "succeeded")
    assert await runner.run_once() == 1  # fetch_images, which emits job.succeeded and queues the delivery
    claimed = await outbox.claim_tasks(owner="dead-runner", limit=10, lease_s=0.0, now=stack.services.clock())
    assert any(task.kind == "deliver" for task in claimed)
    assert await runner.run_once() >= 1
    await until(lambda: len(hook.hooks) == 1)
    assert await runner.run_once() == 0
    assert len(hook.hooks) == 1


async def test_expired_result_image_is_visible_without_failing_the_edit(
    make_stack: StackFactory, hook: HookReceiver
) -> None:
    """A result URL that 404s marks the image fetch failed on the job; the job stays succeeded and is announced."""
    from receiver.emulators.fal import FalEmulatorConfig

    config = FalEmulatorConfig(queue_s=0.01, inference_s=0.02, time_scale=0.001, cdn_ttl_s=0)
    stack = await make_stack(emulator_config=config, **FAST)
    await subscribe(stack, {"kind": "webhook", "url": hook.url})
    job = await stack.create_job()
    await until(lambda: len(hook.hooks) == 1)
    view = await stack.job(job["id"])
    assert view["status"] == "succeeded"
    assert view["images_status"] == "failed" and "not_found" in view["images_error"]
    assert view["input_image"]["sha256"]  # the input still made it into the store
    event = hook.events("job.succeeded")[0]
    assert event["data"]["job"]["images_status"] == "failed"


async def test_blocked_result_host_is_refused(make_stack: StackFactory) -> None:
    """Result images from a host off the provider's allow-list are not fetched (SSRF guard end to end)."""
    stack = await make_stack(fetch_allowed_hosts="", **FAST)
    job = await stack.create_job()
    view = await stack.wait_for(job["id"], lambda j: j["images_status"] in ("stored", "failed"))
    assert view["images_status"] == "failed" and "blocked_target" in view["images_error"]


async def test_rotated_secret_signs_with_both_during_grace(make_stack: StackFactory, hook: HookReceiver) -> None:
    """After a rotation, deliveries carry two signatures: the old secret and the new one both verify."""
    stack = await make_stack(**FAST)
    sub = await subscribe(stack, {"kind": "webhook", "url": hook.url, "events": ["job.succeeded"]})
    rotated = (await stack.client.post(f"/v1/subscriptions/{sub['id']}/rotate-secret")).json()
    assert rotated["secret"] != sub["secret"]
    job = await stack.create_job()
    await stack.wait_final(job["id"])
    await until(lambda: len(hook.hooks) == 1)
    headers, body = hook.hooks[0].headers, hook.hooks[0].body
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(sub["secret"]).verify(body, headers)
    Webhook(rotated["secret"]).verify(body, headers)


async def test_cli_manages_subscriptions_and_deliveries(make_stack: StackFactory, hook: HookReceiver) -> None:
    """`receiver subscriptions add|list|test|rm` and `receiver deliveries list|retry|replay` against a live server."""
    from typer.testing import CliRunner

    from receiver.cli.main import app

    stack = await make_stack(**FAST)

    async def cli(*args: str) -> Any:
        result = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--url", stack.url])
        return result

    added = await cli("subscriptions", "add", "webhook", "--target", hook.url, "--json")
    assert added.exit_code == 0, repr(added.output)
    assert added.exception is None, repr(added.exception)
    sub = json.loads(added.output)
    assert sub["secret"].startswith("whsec_")
    listed = await cli("subscriptions", "list", "--json")
    assert [s["id"] for s in json.loads(listed.output)["subscriptions"]] == [sub["id"]]
    tested = await cli("subscriptions", "test", sub["id"])
    assert tested.exit_code == 0 and "status 200" in tested.output
    job = await stack.create_job()
    await stack.wait_final(job["id"])
    await until(lambda: len(hook.events("job.succeeded")) == 1)
    shown = await cli("deliveries", "list", "--job", job["id"], "--json")
    [delivery] = json.loads(shown.output)["deliveries"]
    assert (await cli("deliveries", "retry", delivery["id"])).exit_code == 0
    await until(lambda: len(hook.events("job.succeeded")) == 2)
    replayed = await cli("deliveries", "replay", "--job", job["id"])
    assert replayed.exit_code == 0 and "requeued 1" in replayed.output
    await until(lambda: len(hook.events("job.succeeded")) == 3)
    assert len({received.headers["webhook-id"] for received in hook.hooks if b"job.succeeded" in received.body}) == 1
    assert (await cli("subscriptions", "rm", sub["id"])).exit_code == 0
    missing = await cli("deliveries", "retry", "dlv_nope")
    assert missing.exit_code == 1 and "not_found" in missing.output
