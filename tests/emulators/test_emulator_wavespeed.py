"""The WaveSpeed emulator over real HTTP on loopback: v3/v2 routes, CDN, HMAC-signed webhooks and every fault."""

from __future__ import annotations

import asyncio
import io
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image, ImageStat

from receiver.emulators.wavespeed import WaveSpeedEmulator, WaveSpeedEmulatorConfig
from receiver.emulators.wavespeed.delivery import SCHEDULE
from receiver.errors import SignatureError
from receiver.ingest.signatures import sign_wavespeed, verify_wavespeed
from receiver.web.asgi_server import running_server
from tests.helpers.images import SAMPLE_PNG, data_uri, png_bytes
from tests.helpers.queue_emulators import (
    FAST,
    STEP1X,
    WAVESPEED_AUTH,
    WaveSpeedHarness,
    wavespeed_client,
    wavespeed_harness,
)
from tests.helpers.receivers import Hook, HookReceiver
from tests.helpers.servers import SwitchedServers, mounted, tcp_socket
from tests.helpers.waiting import until

MODEL = STEP1X
AUTH = WAVESPEED_AUTH
# Tests sharing the module-scoped servers run on the module's event loop.
on_shared_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def harness(servers: SwitchedServers) -> AsyncIterator[WaveSpeedHarness]:
    async with wavespeed_harness(servers) as harness:
        yield harness


def verifies(secret: str, hook: Hook, *, now: float | None = None) -> bool:
    try:
        verify_wavespeed(secret, hook.headers, hook.body, now=time.time() if now is None else now)
    except SignatureError:
        return False
    return True


@on_shared_loop
async def test_submit_polls_through_every_status_to_a_fetchable_image(harness: WaveSpeedHarness) -> None:
    """Submit answers `created`; polling sees created, processing, completed; the output keeps the input size."""
    # Each state is held by an event, not a time window: one slot, taken by a prediction whose input is held
    # back, keeps ours `created`; our own held-back input then keeps it `processing`.
    harness.configure(queue_s=0, inference_s=0.1, concurrency_limit=1)
    blocker = harness.emu.predictions[
        (await harness.submit(image=harness.receiver.gated("blocker"), webhook=False))["id"]
    ]
    await until(lambda: blocker.status == "processing")
    submitted = await harness.submit(image=harness.receiver.gated("input"), webhook=False)
    prediction_id = submitted["id"]
    assert len(prediction_id) == 32
    assert submitted == {
        "id": prediction_id,
        "model": MODEL,
        "outputs": [],
        "urls": {"get": f"{harness.root}/wavespeed/api/v3/predictions/{prediction_id}/result"},
        "has_nsfw_contents": [],
        "status": "created",
        "created_at": submitted["created_at"],
        "error": "",
        "timings": {"inference": 0},
    }
    assert submitted["created_at"].endswith("Z")
    seen = [(await harness.result(submitted["urls"]["get"]))["status"]]
    harness.receiver.release("blocker")
    state = harness.emu.predictions[prediction_id]
    await until(lambda: state.status == "processing")
    seen.append((await harness.result(submitted["urls"]["get"]))["status"])
    harness.receiver.release("input")
    data = await harness.finished(submitted, seen=seen)
    assert seen == ["created", "processing", "completed"]
    assert (data["has_nsfw_contents"], data["error"]) == ([False], "")
    assert data["timings"]["inference"] >= 100
    (output,) = data["outputs"]
    assert output.startswith(f"{harness.root}/wavespeed/cdn/")
    served = await harness.client.get(output)
    assert served.headers["content-type"] == "image/jpeg"
    with Image.open(SAMPLE_PNG) as sample, Image.open(io.BytesIO(served.content)) as edited:
        assert (edited.format, edited.size) == ("JPEG", sample.size)


@on_shared_loop
@pytest.mark.parametrize("version", ["v2", "v3"])
@pytest.mark.parametrize("suffix", ["/result", ""], ids=["result", "bare"])
async def test_both_versions_and_both_result_paths_serve(harness: WaveSpeedHarness, version: str, suffix: str) -> None:
    """A v2 submit gets v2 URLs; `/predictions/{id}` and `.../result` answer the same envelope."""
    submitted = await harness.submit(version=version, webhook=False)
    assert submitted["urls"]["get"] == f"{harness.root}/wavespeed/api/{version}/predictions/{submitted['id']}/result"
    await harness.finished(submitted)
    data = await harness.result(f"/api/{version}/predictions/{submitted['id']}{suffix}")
    assert (data["id"], data["status"]) == (submitted["id"], "completed")
    assert data["urls"] == submitted["urls"]


@on_shared_loop
async def test_prompt_picks_the_edit(harness: WaveSpeedHarness) -> None:
    """The prompt drives the Pillow edit: "black and white" gives a grey output."""
    submitted = await harness.submit(prompt="make it black and white", webhook=False)
    (output,) = (await harness.finished(submitted))["outputs"]
    with Image.open(io.BytesIO((await harness.client.get(output)).content)) as edited:
        red, green, blue = ImageStat.Stat(edited).mean
    assert abs(red - green) < 3 and abs(green - blue) < 3


@on_shared_loop
async def test_webhook_is_signed_and_carries_the_prediction(harness: WaveSpeedHarness) -> None:
    """The webhook verifies with the served secret and carries the prediction without the envelope."""
    submitted = await harness.submit(seed=7, negative_prompt="blurry")
    (hook,) = await harness.hooks(1)
    secret = await harness.secret()
    assert secret.startswith("whsec_")
    assert verify_wavespeed(secret, hook.headers, hook.body, now=time.time()) == hook.headers["webhook-id"]
    assert hook.headers["content-type"] == "application/json"
    assert hook.headers["webhook-signature"].startswith("v3,")
    body = hook.json
    assert list(body) == [
        "id",
        "model",
        "input",
        "outputs",
        "urls",
        "has_nsfw_contents",
        "status",
        "created_at",
        "error",
        "executionTime",
        "timings",
    ]
    assert body["input"]["seed"] == 7
    assert body["input"]["negative_prompt"] == "blurry"
    assert (body["input"]["guidance_scale"], body["input"]["num_inference_steps"]) == (4, 30)
    result = await harness.result(submitted["urls"]["get"])
    for name in ("id", "model", "outputs", "urls", "has_nsfw_contents", "status", "created_at", "error", "timings"):
        assert body[name] == result[name], name
    assert body["executionTime"] == body["timings"]["inference"]
    state = await harness.settled(submitted)
    assert [(a.attempt, a.status_code) for a in state.deliveries] == [(1, 200)]


def test_signature_reproduces_our_own_test_vector() -> None:
    """sign_wavespeed reproduces our docs/providers.md#wavespeed-webhooks vector: key = the secret minus `whsec_`."""
    body = b'{"id":"abc123","status":"completed","outputs":["https://example.invalid/1.png"]}'
    headers = sign_wavespeed("whsec_dGVzdC1zZWNyZXQ=", webhook_id="abc123", timestamp=1760000000, body=body)
    assert headers == {
        "webhook-id": "abc123",
        "webhook-timestamp": "1760000000",
        "webhook-signature": "v3,7ff30905060fa33a30de930f107c6641423507e1142b3e7a3d472e85890df194",
    }


@on_shared_loop
async def test_bad_signature_does_not_verify(harness: WaveSpeedHarness) -> None:
    """bad_signature: the webhook is signed with a secret other than the served one."""
    harness.configure(bad_signature=True)
    await harness.submit()
    (hook,) = await harness.hooks(1)
    with pytest.raises(SignatureError) as caught:
        verify_wavespeed(await harness.secret(), hook.headers, hook.body, now=time.time())
    assert caught.value.code == "invalid_signature"


@on_shared_loop
async def test_duplicate_delivery_sends_two_events(harness: WaveSpeedHarness) -> None:
    """duplicate_delivery: the same body arrives twice, each validly signed, under its own webhook-id."""
    harness.configure(duplicate_delivery=True)
    state = await harness.settled(await harness.submit())
    first, second = await harness.hooks(2)
    assert first.body == second.body
    assert first.headers["webhook-id"] != second.headers["webhook-id"]
    secret = await harness.secret()
    assert verifies(secret, first) and verifies(secret, second)
    assert [(a.delivery, a.status_code) for a in state.deliveries] == [(1, 200), (2, 200)]


@on_shared_loop
async def test_retries_after_a_500_with_the_same_webhook_id(harness: WaveSpeedHarness) -> None:
    """A 500 from the receiver is retried: same body and webhook-id, each try freshly signed and recorded."""
    harness.receiver.answers = [500]
    state = await harness.settled(await harness.submit())
    assert [(a.attempt, a.status_code) for a in state.deliveries] == [(1, 500), (2, 200)]
    assert state.delivery_state == "delivered"
    first, second = await harness.hooks(2)
    assert first.body == second.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == state.deliveries[0].webhook_id
    secret = await harness.secret()
    assert verifies(secret, first) and verifies(secret, second)


@on_shared_loop
@pytest.mark.parametrize(
    ("code", "message"),
    [(1402, "Failed to download image from the provided URL."), (5003, "Service unavailable")],
    ids=["media-access-failed", "unavailable"],
)
async def test_task_error_fails_the_prediction_inside_a_200(harness: WaveSpeedHarness, code: int, message: str) -> None:
    """task_error_code: HTTP 200 and envelope code 200, `data.status` failed with code and error; the webhook is
    failed with the error but, as documented, no `code`."""
    harness.configure(task_error_code=code)
    submitted = await harness.submit()
    response = await harness.client.get(submitted["urls"]["get"])
    assert (response.status_code, response.json()["code"]) == (200, 200)
    data = await harness.finished(submitted)
    assert (data["status"], data["code"], data["error"], data["outputs"]) == ("failed", code, message, [])
    (hook,) = await harness.hooks(1)
    assert verifies(await harness.secret(), hook)
    body = hook.json
    assert (body["status"], body["error"]) == ("failed", message)
    assert "code" not in body
    assert "outputs" not in body


@on_shared_loop
async def test_task_error_count_is_consumed_one_per_submit(harness: WaveSpeedHarness) -> None:
    """task_error_count=2: the first two predictions fail with 5003, the third completes, the fault resets."""
    harness.configure(task_error_code=5003, task_error_count=2)
    submitted = [await harness.submit(webhook=False) for _ in range(3)]
    assert harness.emu.config.task_error_code is None
    outcomes = [(data["status"], data.get("code")) for data in [await harness.finished(s) for s in submitted]]
    assert outcomes == [("failed", 5003), ("failed", 5003), ("completed", None)]


@on_shared_loop
@pytest.mark.parametrize(
    ("image", "code"),
    [
        ("http://127.0.0.1:9/unreachable.png", 1402),
        ("{receiver}/missing.png", 1402),
        ("data:image/png;base64,bm90IGFuIGltYWdl", 1401),
        ("data:image/png;base64,***", 1401),
    ],
    ids=["unreachable", "http-404", "not-an-image", "bad-base64"],
)
async def test_unreadable_input_fails_the_task(harness: WaveSpeedHarness, image: str, code: int) -> None:
    """An input that cannot be fetched (1402) or decoded (1401) fails the prediction, not the submit."""
    submitted = await harness.submit(image=image.format(receiver=harness.receiver.base))
    data = await harness.finished(submitted)
    assert (data["status"], data["code"]) == ("failed", code)
    assert "image" in data["error"].lower()
    (hook,) = await harness.hooks(1)
    assert hook.json["status"] == "failed" and "code" not in hook.json  # the code is only in the polled data


@on_shared_loop
async def test_submit_failures_answer_in_order_then_accept(harness: WaveSpeedHarness) -> None:
    """submit_failures: each status is answered once in the envelope, 429 with Retry-After: 1; then 200."""
    harness.configure(submit_failures=[429, 500])
    body = {"prompt": "x", "image": data_uri(png_bytes())}
    responses = [await harness.client.post(f"/api/v3/{MODEL}", json=body) for _ in range(3)]
    assert [r.status_code for r in responses] == [429, 500, 200]
    assert responses[0].headers["retry-after"] == "1"
    assert responses[0].json() == {"code": 429, "message": "Too many requests", "data": None}
    assert responses[1].json() == {"code": 500, "message": "Internal server error", "data": None}
    assert "retry-after" not in responses[1].headers
    assert harness.emu.config.submit_failures == []


@on_shared_loop
@pytest.mark.parametrize(
    ("api_key", "header", "expected"),
    [
        (None, None, 401),
        (None, "Key anything", 401),
        (None, "Bearer", 401),
        (None, "Bearer anything", 200),
        ("secret", "Bearer wrong", 401),
        ("secret", "Bearer secret", 200),
    ],
    ids=["none", "key-scheme", "empty-bearer", "any-bearer", "wrong-key", "right-key"],
)
async def test_submit_checks_the_key(
    harness: WaveSpeedHarness, api_key: str | None, header: str | None, expected: int
) -> None:
    """Without a matching `Authorization: Bearer ...` header the API answers 401 in the envelope."""
    harness.configure(api_key=api_key)
    headers = {"Authorization": header} if header is not None else {}
    body = {"prompt": "x", "image": data_uri(png_bytes())}
    async with wavespeed_client(harness.root, headers) as client:
        response = await client.post(f"/api/v3/{MODEL}", json=body)
    assert response.status_code == expected
    if expected == 401:
        assert response.json() == {"code": 401, "message": "Unauthorized", "data": None}


@on_shared_loop
@pytest.mark.parametrize("path", ["/api/v3/webhook/secret", "/api/v3/predictions/x/result", "/api/v3/predictions/x"])
async def test_reads_need_the_key_too(harness: WaveSpeedHarness, path: str) -> None:
    """The secret and result routes answer 401 without a Bearer key."""
    async with wavespeed_client(harness.root) as client:
        response = await client.get(path)
    assert (response.status_code, response.json()["code"]) == (401, 401)


@on_shared_loop
@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({"image": "https://example.invalid/a.png"}, "prompt"),
        ({"prompt": "x"}, "image"),
        ({"prompt": 3, "image": "https://example.invalid/a.png"}, "prompt"),
        ({"prompt": "x", "image": "ftp://example.invalid/a.png"}, "image"),
        ({"prompt": "x", "image": "https://e.invalid/a.png", "seed": 10_000_000_000}, "seed"),
        ({"prompt": "x", "image": "https://e.invalid/a.png", "seed": -2}, "seed"),
        ({"prompt": "x", "image": "https://e.invalid/a.png", "guidance_scale": 20.5}, "guidance_scale"),
        ({"prompt": "x", "image": "https://e.invalid/a.png", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "x", "image": "https://e.invalid/a.png", "enable_sync_mode": "yes"}, "enable_sync_mode"),
        ({"prompt": "x", "image": "https://e.invalid/a.png", "negative_prompt": 1}, "negative_prompt"),
        (["not", "an", "object"], "body"),
    ],
    ids=[
        "missing-prompt",
        "missing-image",
        "prompt-not-str",
        "image-scheme",
        "seed-high",
        "seed-low",
        "guidance-high",
        "steps-zero",
        "sync-not-bool",
        "negative-not-str",
        "not-an-object",
    ],
)
async def test_submit_rejects_invalid_input(harness: WaveSpeedHarness, body: Any, field_name: str) -> None:
    """An input failing the schema answers 400 in the envelope, the message naming the field."""
    response = await harness.client.post(f"/api/v3/{MODEL}", json=body)
    assert response.status_code == 400
    document = response.json()
    assert (document["code"], document["data"]) == (400, None)
    assert field_name in document["message"]
    assert harness.emu.predictions == {}


@on_shared_loop
@pytest.mark.parametrize(
    ("content", "params"),
    [(b"{not json", {}), (b'{"prompt":"x","image":"https://e.invalid/a.png"}', {"webhook": "ftp://x/"})],
    ids=["invalid-json", "webhook-scheme"],
)
async def test_submit_rejects_a_bad_body_or_webhook(
    harness: WaveSpeedHarness, content: bytes, params: dict[str, str]
) -> None:
    """Unparseable JSON and a non-http(s) webhook answer 400 in the envelope."""
    response = await harness.client.post(f"/api/v3/{MODEL}", content=content, params=params)
    assert (response.status_code, response.json()["code"]) == (400, 400)


@on_shared_loop
async def test_sync_mode_answers_with_the_final_prediction(harness: WaveSpeedHarness) -> None:
    """enable_sync_mode: the submit waits and answers with the completed prediction."""
    data = await harness.submit(enable_sync_mode=True, webhook=False)
    assert data["status"] == "completed"
    assert len(data["outputs"]) == 1
    assert data["timings"]["inference"] > 0


@on_shared_loop
async def test_sync_mode_times_out_into_polling(harness: WaveSpeedHarness) -> None:
    """When sync_timeout_s runs out the submit answers the unfinished prediction with a sync-timeout error."""
    harness.configure(queue_s=30, sync_timeout_s=0.01)
    data = await harness.submit(enable_sync_mode=True, webhook=False)
    assert data["status"] == "created"
    assert data["code"] == 5004  # the timeout task code: the SDK reads it as "still running, poll urls.get"
    assert "Sync mode timed out" in data["error"]


@on_shared_loop
@pytest.mark.parametrize(("version", "status_code"), [("v3", 400), ("v2", 200)])
async def test_seed_range_follows_the_api_version(harness: WaveSpeedHarness, version: str, status_code: int) -> None:
    """v3 takes seeds up to 2147483647 (its page's range); v2 keeps its wider -1..9999999999."""
    body = {"prompt": "x", "image": data_uri(png_bytes()), "seed": 2_147_483_648}
    response = await harness.client.post(f"/api/{version}/{MODEL}", json=body)
    assert response.status_code == status_code
    if status_code == 400:
        assert "seed must be an integer from -1 to 2147483647" in response.json()["message"]
    ok = await harness.client.post(f"/api/v3/{MODEL}", json={**body, "seed": 2_147_483_647})
    assert ok.status_code == 200


@on_shared_loop
async def test_binary_upload_answers_a_download_url(harness: WaveSpeedHarness) -> None:
    """POST /api/v3/media/upload/binary (multipart `file`) answers type, download_url, filename and size."""
    data = png_bytes()
    response = await harness.client.post("/api/v3/media/upload/binary", files={"file": ("in.png", data, "image/png")})
    assert response.status_code == 200, response.text
    document = response.json()
    assert (document["code"], document["message"]) == (200, "success")
    uploaded = document["data"]
    assert {k: uploaded[k] for k in ("type", "filename", "size")} == {
        "type": "image",
        "filename": "in.png",
        "size": len(data),
    }
    assert (await harness.client.get(uploaded["download_url"])).content == data


@on_shared_loop
@pytest.mark.parametrize(
    ("files", "words"),
    [({}, "file is required"), ({"file": ("a.txt", b"hello", "text/plain")}, "unsupported type")],
    ids=["no-file", "not-media"],
)
async def test_binary_upload_refuses_what_is_not_media(
    harness: WaveSpeedHarness, files: dict[str, Any], words: str
) -> None:
    """No file part, or a file that is not image/video/audio, answers 400 in the envelope."""
    response = await harness.client.post("/api/v3/media/upload/binary", data={"x": "y"}, files=files or None)
    assert (response.status_code, response.json()["code"]) == (400, 400)
    assert words in response.json()["message"]


@on_shared_loop
async def test_upload_ticket_then_put(harness: WaveSpeedHarness) -> None:
    """The SDK's ticket form: the ticket names a PUT URL; the download URL serves the bytes once PUT, and only once."""
    data = png_bytes()
    response = await harness.client.post("/api/v3/media/uploads", json={"filename": "in.png", "size": len(data)})
    assert response.status_code == 200, response.text
    ticket = response.json()["data"]
    upload = ticket["upload"]
    assert (upload["method"], upload["headers"]) == ("PUT", {"Content-Type": "image/png"})
    assert (await harness.client.get(ticket["download_url"])).status_code == 404
    assert (await harness.client.put(upload["url"], content=data[:-1])).status_code == 400
    assert (await harness.client.put(upload["url"], content=data)).status_code == 200
    assert (await harness.client.get(ticket["download_url"])).content == data
    assert (await harness.client.put(upload["url"], content=data)).status_code == 404


@on_shared_loop
@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"size": 10}, "filename is required"),
        ({"filename": "a.png", "size": 0}, "size must be"),
        ({"filename": "a.txt", "size": 10}, "unsupported type"),
        ({"filename": "noextension", "size": 10}, "content_type is required"),
    ],
    ids=["no-filename", "size-zero", "not-media", "unknown-type"],
)
async def test_upload_ticket_refuses_bad_requests(harness: WaveSpeedHarness, body: dict[str, Any], words: str) -> None:
    """A ticket request that is missing a field or is not for media answers 400 naming the field."""
    response = await harness.client.post("/api/v3/media/uploads", json=body)
    assert (response.status_code, response.json()["code"]) == (400, 400)
    assert words in response.json()["message"]


@on_shared_loop
@pytest.mark.parametrize("path", ["/api/v3/media/upload", "/api/v3/media/other/thing", "/api/v2/predictions/x"])
async def test_api_paths_are_never_taken_for_models(harness: WaveSpeedHarness, path: str) -> None:
    """A POST to an API path that is not a route answers 404 saying so, instead of submitting a prediction."""
    response = await harness.client.post(path, json={"prompt": "x", "image": data_uri(png_bytes())})
    assert (response.status_code, response.json()["code"]) == (404, 404)
    assert "is not a model" in response.json()["message"]
    assert harness.emu.predictions == {}


@on_shared_loop
async def test_concurrency_limit_keeps_extra_predictions_created(harness: WaveSpeedHarness) -> None:
    """concurrency_limit=1: the others stay created until the running one finishes, then the next one starts."""
    harness.configure(queue_s=0, inference_s=0.05, concurrency_limit=1)
    quick = await harness.submit(image=harness.receiver.gated("quick"), webhook=False)  # processing until released
    harness.configure(queue_s=0, inference_s=30, concurrency_limit=1)
    slow, last = [await harness.submit(webhook=False) for _ in range(2)]
    states = [harness.emu.predictions[s["id"]] for s in (quick, slow, last)]
    await until(lambda: states[0].status == "processing")
    assert [state.status for state in states] == ["processing", "created", "created"]
    harness.receiver.release("quick")
    assert (await harness.finished(quick))["status"] == "completed"
    await until(lambda: states[1].status == "processing")
    assert [(await harness.result(s["urls"]["get"]))["status"] for s in (slow, last)] == ["processing", "created"]
    assert harness.emu.max_seen_concurrency == 1


@on_shared_loop
async def test_raising_the_concurrency_limit_starts_waiting_predictions(harness: WaveSpeedHarness) -> None:
    """A prediction waiting for a slot starts as soon as the control route lifts the limit."""
    harness.configure(queue_s=0, inference_s=30, concurrency_limit=1)
    first, second = [harness.emu.predictions[(await harness.submit(webhook=False))["id"]] for _ in range(2)]
    await until(lambda: first.status == "processing")
    assert second.status == "created"
    response = await harness.client.post("/_emulator/config", json={"concurrency_limit": 0})
    assert response.status_code == 200
    await until(lambda: second.status == "processing")
    assert harness.emu.max_seen_concurrency == 2


@on_shared_loop
@pytest.mark.parametrize(
    ("method", "path", "status_code"),
    [
        ("GET", "/api/v3/predictions/nope/result", 404),
        ("GET", "/api/v3/predictions/nope", 404),
        ("GET", "/api/v4/predictions/nope/result", 404),
        ("POST", "/api/v3/only-owner", 404),
        ("GET", "/cdn/nope.jpeg", 404),
        ("DELETE", f"/api/v3/{MODEL}", 405),
    ],
    ids=["unknown-result", "unknown-bare", "unknown-version", "no-model-name", "unknown-file", "wrong-method"],
)
async def test_errors_keep_the_envelope(harness: WaveSpeedHarness, method: str, path: str, status_code: int) -> None:
    """Unknown ids, paths and methods answer their HTTP status in the `{code, message, data}` envelope."""
    response = await harness.client.request(method, path, json={"prompt": "x", "image": "https://e.invalid/a"})
    assert response.status_code == status_code
    document = response.json()
    assert (document["code"], document["data"]) == (status_code, None)
    assert document["message"]


@on_shared_loop
async def test_control_routes_show_and_change_state(harness: WaveSpeedHarness) -> None:
    """The control routes mask secrets, validate changes and show a prediction with its deliveries."""
    config = (await harness.client.post("/_emulator/config", json={"api_key": "k", "max_attempts": 3})).json()
    assert (config["api_key"], config["webhook_secret"], config["max_attempts"]) == ("**********", "**********", 3)
    secret = harness.emu.config.webhook_secret
    assert (harness.emu.config.api_key, secret[:6]) == ("k", "whsec_")
    await harness.client.post("/_emulator/config", json={**config, "queue_s": 0.02})
    assert (harness.emu.config.api_key, harness.emu.config.webhook_secret) == ("k", secret)
    for patch in ({"max_attempts": 0}, {"nope": 1}, {"webhook_secret": "plain"}, ["x"]):
        response = await harness.client.post("/_emulator/config", json=patch)
        assert (response.status_code, response.json()["code"]) == (422, 422)
    assert (await harness.client.get("/_emulator/config")).json()["max_attempts"] == 3
    harness.emu.config.api_key = None
    submitted = await harness.submit()
    await harness.settled(submitted)
    shown = (await harness.client.get(f"/_emulator/predictions/{submitted['id']}")).json()
    assert (shown["status"], shown["version"], shown["code"]) == ("completed", "v3", None)
    assert shown["deliveries"][0]["status_code"] == 200
    assert shown["deliveries"][0]["webhook_id"]
    assert shown["image"].endswith("...")
    listing = (await harness.client.get("/_emulator/predictions")).json()["predictions"]
    assert [p["id"] for p in listing] == [submitted["id"]]
    assert (await harness.client.get("/_emulator/predictions/nope")).status_code == 404


async def test_results_and_files_expire() -> None:
    """With a fake clock: files 404 after cdn_ttl_s, predictions (and their files) after result_ttl_s."""
    now = [1_000_000.0]
    emu = WaveSpeedEmulator(WaveSpeedEmulatorConfig(**FAST, cdn_ttl_s=50, result_ttl_s=100), clock=lambda: now[0])
    async with (
        running_server(mounted(emu, "/wavespeed"), sock=tcp_socket()) as root,
        wavespeed_client(root, AUTH) as client,
    ):
        harness = WaveSpeedHarness(emu, client, HookReceiver(), root)
        submitted = await harness.submit(webhook=False)
        data = await harness.finished(submitted)
        assert data["created_at"] == "1970-01-12T13:46:40.000Z"
        (output,) = data["outputs"]
        assert (await client.get(output)).status_code == 200
        now[0] += 60
        assert (await client.get(output)).status_code == 404
        assert (await client.get(submitted["urls"]["get"])).status_code == 200
        now[0] += 40
        for url in (submitted["urls"]["get"], f"/api/v3/predictions/{submitted['id']}"):
            response = await client.get(url)
            assert response.status_code == 404
            assert response.json() == {"code": 404, "message": "Prediction not found", "data": None}


async def test_webhook_timestamps_come_from_the_clock() -> None:
    """The webhook-timestamp is the emulator's clock, so a fake clock's webhook verifies only at that time."""
    now = [1_760_000_000.0]
    emu = WaveSpeedEmulator(WaveSpeedEmulatorConfig(**FAST), clock=lambda: now[0])
    hooks = HookReceiver()
    async with (
        running_server(hooks.app(), sock=tcp_socket()) as hooks_base,
        running_server(mounted(emu, "/wavespeed"), sock=tcp_socket()) as root,
        wavespeed_client(root, AUTH) as client,
    ):
        hooks.base = hooks_base
        harness = WaveSpeedHarness(emu, client, hooks, root)
        await harness.submit()
        (hook,) = await harness.hooks(1)
        secret = await harness.secret()
    assert hook.headers["webhook-timestamp"] == "1760000000"
    assert verifies(secret, hook, now=now[0])
    assert not verifies(secret, hook, now=now[0] + 301)


async def test_shutdown_cancels_running_predictions() -> None:
    """Stopping the server (the mounting app's lifespan) cancels created predictions and closes the emulator."""
    emu = WaveSpeedEmulator(WaveSpeedEmulatorConfig(**{**FAST, "queue_s": 30}))
    async with (
        running_server(mounted(emu, "/wavespeed"), sock=tcp_socket()) as root,
        wavespeed_client(root, AUTH) as client,
    ):
        submitted = await WaveSpeedHarness(emu, client, HookReceiver(), root).submit(webhook=False)
    assert emu.predictions[submitted["id"]].status == "created"
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("wavespeed-emulator-")]


def test_retry_schedule_doubles_from_five_seconds() -> None:
    """Five tries wait 5, 10, 20, 40 s (scaled by time_scale), then give up; long schedules are capped."""
    assert [SCHEDULE.delay_s(n, max_attempts=5) for n in range(1, 6)] == [5.0, 10.0, 20.0, 40.0, None]
    assert SCHEDULE.delay_s(1, max_attempts=5, time_scale=0.001) == pytest.approx(0.005)
    delays = [SCHEDULE.delay_s(n, max_attempts=30) or 0.0 for n in range(1, 30)]
    assert all(a < b or a == b == SCHEDULE.max_delay_s for a, b in itertools.pairwise(delays))
