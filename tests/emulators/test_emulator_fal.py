"""The fal emulator over real HTTP on loopback: queue routes, CDN, signed webhooks and every fault."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from receiver.emulators import create_emulator_app
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.emulators.fal.delivery import ATTEMPT_TIMEOUT_S, SCHEDULE
from receiver.emulators.imaging import ImageError, decode_data_uri, edit_image, pick_edit
from receiver.errors import SignatureError
from receiver.ingest.signatures import parse_jwks, verify_fal
from receiver.web.asgi_server import running_server
from tests.helpers.images import SAMPLE_PNG, data_uri, png_bytes
from tests.helpers.queue_emulators import FAL_AUTH, FAST, STEPX, FalHarness, fal_harness
from tests.helpers.receivers import Hook, HookReceiver
from tests.helpers.servers import SwitchedServers, tcp_socket
from tests.helpers.waiting import until

SDXL = "fal-ai/fast-sdxl/image-to-image"
AUTH = FAL_AUTH
# Tests sharing the module-scoped servers run on the module's event loop.
on_shared_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def harness(servers: SwitchedServers) -> AsyncIterator[FalHarness]:
    async with fal_harness(servers) as harness:
        yield harness


def verifies(jwks: dict[str, Any], hook: Hook) -> bool:
    try:
        verify_fal(parse_jwks(jwks), hook.headers, hook.body, now=time.time())
    except SignatureError:
        return False
    return True


@on_shared_loop
async def test_submit_polls_to_a_result_with_a_fetchable_image(harness: FalHarness) -> None:
    """Submit answers IN_QUEUE, status goes 202 then 200 with metrics, the result's image is served."""
    submitted = await harness.submit(
        prompt="make head band red", image_url=harness.receiver.gated("input", png_bytes(32, 24))
    )
    assert submitted["status"] == "IN_QUEUE"
    assert submitted["gateway_request_id"] == submitted["request_id"]
    assert submitted["queue_position"] == 0
    early = await harness.client.get(submitted["status_url"])  # the input is held back: it cannot have finished
    assert early.status_code == 202
    assert early.json()["status"] in {"IN_QUEUE", "IN_PROGRESS"}
    harness.receiver.release("input")
    status = await harness.completed(submitted)
    assert status["status"] == "COMPLETED"
    assert status["metrics"]["inference_time"] > 0
    assert status["logs"] is None
    assert {"request_id", "response_url", "status_url", "cancel_url"} <= status.keys()
    result = await harness.client.get(submitted["response_url"])
    assert result.status_code == 200
    output = result.json()
    assert output["prompt"] == "make head band red"
    assert output["has_nsfw_concepts"] == [False]
    assert isinstance(output["seed"], int)
    (image,) = output["images"]
    assert (image["width"], image["height"], image["content_type"]) == (32, 24, "image/jpeg")
    served = await harness.client.get(image["url"])
    assert served.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(served.content)).size == (32, 24)


@on_shared_loop
async def test_webhook_is_signed_and_carries_the_output(harness: FalHarness) -> None:
    """The completion webhook verifies against the JWKS and its payload equals the result body."""
    submitted = await harness.submit(seed=7)
    (hook,) = await harness.hooks(1)
    assert verifies(await harness.keys(), hook)
    assert hook.headers["content-type"] == "application/json"
    assert hook.headers["x-fal-webhook-user-id"] == "emulator-user"
    body = hook.json
    assert body["request_id"] == body["gateway_request_id"] == submitted["request_id"]
    assert body["status"] == "OK"
    assert body["payload"]["seed"] == 7
    assert body["payload"] == (await harness.client.get(submitted["response_url"])).json()
    assert hook.body == json.dumps(body, separators=(",", ":")).encode()
    state = await harness.settled(submitted)
    assert [(a.attempt, a.status_code) for a in state.deliveries] == [(1, 200)]


@on_shared_loop
async def test_status_lists_logs_when_asked(harness: FalHarness) -> None:
    """`?logs=1` returns log entries with message, level, source and timestamp."""
    submitted = await harness.submit()
    await harness.completed(submitted)
    logs = (await harness.client.get(submitted["status_url"], params={"logs": 1})).json()["logs"]
    assert logs
    assert set(logs[0]) == {"message", "level", "source", "timestamp"}


@on_shared_loop
async def test_queue_urls_use_owner_and_app_only(harness: FalHarness) -> None:
    """A submit to owner/app/path returns URLs under owner/app, with the /fal mount and host:port."""
    submitted = await harness.submit(SDXL, image_size={"width": 16, "height": 16})
    prefix = f"{harness.root}/fal/fal-ai/fast-sdxl/requests/{submitted['request_id']}"
    assert submitted["response_url"] == prefix
    assert submitted["status_url"] == f"{prefix}/status"
    assert submitted["cancel_url"] == f"{prefix}/cancel"


@on_shared_loop
@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", "/status"), ("GET", ""), ("PUT", "/cancel")],
    ids=["status", "result", "cancel"],
)
async def test_queue_routes_under_the_subpath_answer_405(harness: FalHarness, method: str, suffix: str) -> None:
    """Status, result and cancel with the model's sub-path before `requests` answer 405."""
    submitted = await harness.submit(SDXL, image_size={"width": 16, "height": 16})
    url = f"/{SDXL}/requests/{submitted['request_id']}{suffix}"
    response = await harness.client.request(method, url)
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}


@on_shared_loop
@pytest.mark.parametrize(
    ("body", "loc", "type_"),
    [
        ({"image_url": "data:,"}, ["body", "prompt"], "value_error.missing"),
        ({"prompt": "x"}, ["body", "image_url"], "value_error.missing"),
        ({"prompt": 3, "image_url": "data:,"}, ["body", "prompt"], "type_error.str"),
        (["not", "an", "object"], ["body"], "type_error.dict"),
        ({"prompt": "x", "image_url": "data:,", "output_format": "gif"}, ["body", "output_format"], None),
    ],
    ids=["missing-prompt", "missing-image-url", "prompt-not-str", "not-an-object", "bad-format"],
)
async def test_submit_rejects_invalid_input(harness: FalHarness, body: Any, loc: list[str], type_: str | None) -> None:
    """An input failing the schema answers 422 with fal's `detail` list naming the field."""
    response = await harness.client.post(f"/{STEPX}", json=body)
    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == loc
    if type_ is not None:
        assert item["type"] == type_
    if loc == ["body", "prompt"] and type_ == "value_error.missing":
        assert item == {"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}


@on_shared_loop
@pytest.mark.parametrize(
    ("api_key", "header", "expected"),
    [
        (None, None, 401),
        (None, "Bearer abc", 401),
        (None, "Key", 401),
        (None, "Key anything", 200),
        ("secret", "Key wrong", 401),
        ("secret", "Key secret", 200),
    ],
    ids=["none", "bearer", "empty-key", "any-key", "wrong-key", "right-key"],
)
async def test_submit_checks_the_key(
    harness: FalHarness, api_key: str | None, header: str | None, expected: int
) -> None:
    """Without a matching `Authorization: Key ...` header the queue answers 401."""
    harness.configure(api_key=api_key)
    headers = {"Authorization": header} if header is not None else {}
    body = {"prompt": "x", "image_url": data_uri(png_bytes())}
    async with httpx.AsyncClient(base_url=f"{harness.root}/fal", headers=headers, trust_env=False) as client:
        response = await client.post(f"/{STEPX}", json=body)
    assert response.status_code == expected
    if expected == 401:
        assert response.json() == {"detail": "Unauthorized"}


@on_shared_loop
@pytest.mark.parametrize(("method", "suffix"), [("GET", "/status"), ("GET", ""), ("PUT", "/cancel")])
async def test_unknown_request_is_not_found(harness: FalHarness, method: str, suffix: str) -> None:
    """Status, result and cancel of an unknown id answer 404 NOT_FOUND."""
    response = await harness.client.request(method, f"/fal-ai/stepx-edit2/requests/nope{suffix}")
    assert response.status_code == 404
    assert response.json() == {"status": "NOT_FOUND"}


@on_shared_loop
async def test_result_before_completion_is_400(harness: FalHarness) -> None:
    """Fetching the result of a queued request answers 400 'still in progress'."""
    harness.configure(queue_s=30)
    submitted = await harness.submit()
    response = await harness.client.get(submitted["response_url"])
    assert response.status_code == 400
    assert response.json() == {"detail": "Request is still in progress"}


@on_shared_loop
async def test_cancel_in_queue_completes_as_cancelled(harness: FalHarness) -> None:
    """Cancelling a queued request answers 202, it never runs and an ERROR webhook follows."""
    harness.configure(queue_s=30)
    submitted = await harness.submit()
    response = await harness.client.put(submitted["cancel_url"])
    assert (response.status_code, response.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    status = await harness.completed(submitted)
    assert (status["error"], status["error_type"]) == ("Request cancelled", "client_cancelled")
    assert status["metrics"] == {}
    (hook,) = await harness.hooks(1)
    assert hook.json["status"] == "ERROR"
    again = await harness.client.put(submitted["cancel_url"])
    assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})


@on_shared_loop
async def test_cancel_in_progress_still_completes(harness: FalHarness) -> None:
    """Cancelling a running request is noted (202) but it completes normally."""
    harness.configure(queue_s=0)
    submitted = await harness.submit(image_url=harness.receiver.gated("input"))  # runs until the input is released
    state = harness.emu.requests[submitted["request_id"]]
    await until(lambda: state.status == "IN_PROGRESS")
    assert (await harness.client.put(submitted["cancel_url"])).status_code == 202
    harness.receiver.release("input")
    status = await harness.completed(submitted)
    assert "error" not in status
    assert state.cancel_requested


@on_shared_loop
async def test_duplicate_delivery_sends_the_webhook_twice(harness: FalHarness) -> None:
    """duplicate_delivery: the same body arrives twice, each copy validly signed."""
    harness.configure(duplicate_delivery=True)
    await harness.settled(await harness.submit())
    first, second = await harness.hooks(2)
    assert first.body == second.body
    keys = await harness.keys()
    assert verifies(keys, first) and verifies(keys, second)


@on_shared_loop
async def test_bad_signature_does_not_verify(harness: FalHarness) -> None:
    """bad_signature: the webhook is signed by a key the JWKS does not list."""
    harness.configure(bad_signature=True)
    await harness.submit()
    (hook,) = await harness.hooks(1)
    with pytest.raises(SignatureError) as caught:
        verify_fal(parse_jwks(await harness.keys()), hook.headers, hook.body, now=time.time())
    assert caught.value.code == "no_key_matched"


@on_shared_loop
async def test_payload_error_sends_null_payload_but_result_serves(harness: FalHarness) -> None:
    """payload_error: the webhook says OK with payload null; the result endpoint has the output."""
    harness.configure(payload_error=True)
    submitted = await harness.submit()
    (hook,) = await harness.hooks(1)
    body = hook.json
    assert (body["status"], body["payload"]) == ("OK", None)
    assert "not JSON serializable" in body["payload_error"]
    result = await harness.client.get(submitted["response_url"])
    assert result.status_code == 200
    assert result.json()["images"]


@on_shared_loop
async def test_model_error_fails_the_request(harness: FalHarness) -> None:
    """model_error: ERROR webhook with a detail payload, COMPLETED with error, result 422."""
    harness.configure(model_error=True)
    submitted = await harness.submit()
    (hook,) = await harness.hooks(1)
    assert verifies(await harness.keys(), hook)
    body = hook.json
    assert (body["status"], body["error"]) == ("ERROR", "Invalid status code: 422")
    assert isinstance(body["payload"]["detail"], list)
    status = await harness.completed(submitted)
    assert status["error"] and status["error_type"]
    result = await harness.client.get(submitted["response_url"])
    assert result.status_code == 422
    assert result.json() == body["payload"]


@on_shared_loop
async def test_submit_failures_answer_in_order_then_accept(harness: FalHarness) -> None:
    """submit_failures: each listed status is answered once, with a platform error and Retry-After."""
    harness.configure(submit_failures=[429, 503])
    body = {"prompt": "x", "image_url": data_uri(png_bytes())}
    statuses = []
    for _ in range(3):
        response = await harness.client.post(f"/{STEPX}", json=body)
        statuses.append(response.status_code)
        if response.status_code != 200:
            assert response.headers["retry-after"] == "0"
            assert set(response.json()) == {"detail", "error_type"}
    assert statuses == [429, 503, 200]
    assert harness.emu.config.submit_failures == []


@on_shared_loop
async def test_webhook_before_response_arrives_first(harness: FalHarness) -> None:
    """webhook_before_response: the webhook is received before the submit response returns."""
    harness.configure(webhook_before_response=True)
    submitted = await harness.submit()
    assert [hook.json["request_id"] for hook in harness.receiver.hooks] == [submitted["request_id"]]


@on_shared_loop
async def test_jwks_down_answers_503(harness: FalHarness) -> None:
    """jwks_down makes the JWKS route answer 503 until switched off through the control route."""
    harness.configure(jwks_down=True)
    assert (await harness.client.get("/.well-known/jwks.json")).status_code == 503
    await harness.client.post("/_emulator/config", json={"jwks_down": False})
    assert (await harness.client.get("/.well-known/jwks.json")).status_code == 200


@on_shared_loop
async def test_retries_after_a_500_with_a_fresh_signature(harness: FalHarness) -> None:
    """A 500 from the receiver is retried; both tries carry the same body, each validly signed."""
    harness.receiver.answers = [500]
    state = await harness.settled(await harness.submit())
    assert [a.status_code for a in state.deliveries] == [500, 200]
    assert state.delivery_state == "delivered"
    first, second = await harness.hooks(2)
    assert first.body == second.body
    keys = await harness.keys()
    assert verifies(keys, first) and verifies(keys, second)


@on_shared_loop
async def test_default_policy_is_the_first_try_and_ten_retries(harness: FalHarness) -> None:
    """By default a receiver that always fails gets the first try and fal's documented 10 retries, no more."""
    harness.configure()
    harness.receiver.answers = [503] * 12
    state = await harness.settled(await harness.submit())
    assert [a.attempt for a in state.deliveries] == list(range(1, 12))
    assert state.delivery_state == "gave_up"


@on_shared_loop
async def test_rotate_key_replaces_the_jwks(harness: FalHarness) -> None:
    """After a rotation the JWKS lists only the new key, and new webhooks verify only with it."""
    old = await harness.keys()
    harness.emu.rotate_key()
    new = await harness.keys()
    assert len(new["keys"]) == 1 and new["keys"] != old["keys"]
    await harness.submit()
    (hook,) = await harness.hooks(1)
    assert verifies(new, hook) and not verifies(old, hook)
    rotated = (await harness.client.post("/_emulator/rotate-key")).json()
    assert rotated == await harness.keys() != new


@on_shared_loop
@pytest.mark.parametrize(
    ("image_size", "expected"),
    [("square", (512, 512)), ("landscape_16_9", (1024, 576)), ({"width": 40, "height": 30}, (40, 30))],
    ids=["square", "landscape-16-9", "custom"],
)
async def test_fast_sdxl_resizes_and_makes_num_images(
    harness: FalHarness, image_size: Any, expected: tuple[int, int]
) -> None:
    """fast-sdxl outputs `num_images` images of `image_size` in `format`, with timings."""
    submitted = await harness.submit(SDXL, image_size=image_size, num_images=2, format="png")
    await harness.completed(submitted)
    output = (await harness.client.get(submitted["response_url"])).json()
    assert len(output["images"]) == 2 and len({image["url"] for image in output["images"]}) == 2
    assert output["has_nsfw_concepts"] == [False, False]
    assert output["timings"]["inference"] > 0
    for image in output["images"]:
        assert (image["width"], image["height"], image["content_type"]) == (*expected, "image/png")
        served = await harness.client.get(image["url"])
        assert Image.open(io.BytesIO(served.content)).size == expected


@on_shared_loop
async def test_stepx_keeps_the_size_of_a_url_input(harness: FalHarness) -> None:
    """An http image_url is downloaded; stepx-edit2 keeps its size and honours output_format."""
    url = f"{harness.receiver.base}/sample.png"
    submitted = await harness.submit(image_url=url, output_format="png", prompt="pencil sketch")
    (hook,) = await harness.hooks(1)
    (image,) = hook.json["payload"]["images"]
    with Image.open(SAMPLE_PNG) as sample:
        size = sample.size
    assert (image["width"], image["height"], image["content_type"]) == (*size, "image/png")
    assert "timings" not in hook.json["payload"]
    assert submitted["request_id"] == hook.json["request_id"]


@on_shared_loop
@pytest.mark.parametrize(
    ("image_url", "type_"),
    [
        ("http://127.0.0.1:9/missing.png", "file_download_error"),
        ("data:image/png;base64,bm90IGFuIGltYWdl", "image_load_error"),
        ("data:image/png;base64,***", "image_load_error"),
        ("ftp://example.invalid/x.png", "file_download_error"),
    ],
    ids=["unreachable", "not-an-image", "bad-base64", "bad-scheme"],
)
async def test_unreadable_input_fails_like_a_model_error(harness: FalHarness, image_url: str, type_: str) -> None:
    """An input that cannot be fetched or decoded completes with an error and an ERROR webhook."""
    submitted = await harness.submit(image_url=image_url)
    (hook,) = await harness.hooks(1)
    assert (hook.json["status"], hook.json["error"]) == ("ERROR", "Invalid status code: 422")
    status = await harness.completed(submitted)
    assert status["error_type"] == type_
    assert hook.json["payload"]["detail"][0]["loc"] == ["body", "image_url"]


async def test_results_and_files_expire() -> None:
    """Results are kept result_ttl_s (large_result_ttl_s from 10 KB) and files cdn_ttl_s, then 404."""
    now = [1_000_000.0]
    emu = FalEmulator(FalEmulatorConfig(**FAST, cdn_ttl_s=50), clock=lambda: now[0])
    async with (
        running_server(create_emulator_app(fal=emu), sock=tcp_socket()) as root,
        httpx.AsyncClient(base_url=f"{root}/fal", headers=AUTH, trust_env=False) as client,
    ):
        harness = FalHarness(emu, client, HookReceiver(), root)
        small = await harness.submit(webhook=False)
        large = await harness.submit(webhook=False, prompt="red " * 3000)
        await harness.completed(small)
        await harness.completed(large)
        image_url = (await client.get(small["response_url"])).json()["images"][0]["url"]
        now[0] += 60
        assert (await client.get(image_url)).status_code == 404
        assert (await client.get(small["response_url"])).status_code == 200
        assert (await client.get(large["response_url"])).status_code == 200
        now[0] += 340
        assert (await client.get(small["response_url"])).status_code == 200
        assert (await client.get(large["response_url"])).status_code == 404
        now[0] += 3600
        assert (await client.get(small["response_url"])).status_code == 404


async def test_shutdown_cancels_running_jobs() -> None:
    """Stopping the emulator app's server (its lifespan) cancels queued jobs and their deliveries."""
    emu = FalEmulator(FalEmulatorConfig(**{**FAST, "queue_s": 30}))
    async with (
        running_server(create_emulator_app(fal=emu), sock=tcp_socket()) as root,
        httpx.AsyncClient(base_url=f"{root}/fal", headers=AUTH, trust_env=False) as client,
    ):
        submitted = await FalHarness(emu, client, HookReceiver(), root).submit()
    assert emu.requests[submitted["request_id"]].status == "IN_QUEUE"
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("fal-emulator-")]


@on_shared_loop
async def test_control_routes_show_and_change_state(harness: FalHarness) -> None:
    """The control routes read and validate config changes and show a request's deliveries."""
    config = (await harness.client.post("/_emulator/config", json={"api_key": "k", "max_attempts": 3})).json()
    assert (config["api_key"], config["max_attempts"]) == ("**********", 3)
    assert harness.emu.config.api_key == "k"
    assert (await harness.client.post("/_emulator/config", json={"max_attempts": 0})).status_code == 422
    assert (await harness.client.post("/_emulator/config", json={"nope": 1})).status_code == 422
    assert (await harness.client.get("/_emulator/config")).json()["max_attempts"] == 3
    harness.emu.config.api_key = None
    submitted = await harness.submit()
    await harness.settled(submitted)
    shown = (await harness.client.get(f"/_emulator/requests/{submitted['request_id']}")).json()
    assert shown["status"] == "COMPLETED"
    assert shown["deliveries"][0]["status_code"] == 200
    assert shown["image_url"].endswith("...")
    listing = (await harness.client.get("/_emulator/requests")).json()["requests"]
    assert [r["request_id"] for r in listing] == [submitted["request_id"]]
    assert (await harness.client.get(f"{harness.root}/healthz")).json()["status"] == "ok"


def test_retry_schedule_is_ten_retries_in_about_two_hours() -> None:
    """By default the first try and fal's documented 10 retries: delays from 15 s growing, and with every try's
    15 s timeout they end just inside 2 h; scaled by time_scale; then give up."""
    tries = FalEmulatorConfig().max_attempts
    assert tries == 11
    delays = [SCHEDULE.delay_s(n, max_attempts=tries) or 0.0 for n in range(1, tries)]
    assert len(delays) == 10 and delays[0] == 15.0
    assert all(a < b or a == b == SCHEDULE.max_delay_s for a, b in itertools.pairwise(delays))
    assert 1.9 * 3600 < sum(delays) + tries * ATTEMPT_TIMEOUT_S <= 2 * 3600
    assert SCHEDULE.delay_s(tries, max_attempts=tries) is None
    assert SCHEDULE.delay_s(1, max_attempts=tries, time_scale=0.001) == pytest.approx(0.015)


@pytest.mark.parametrize(
    ("prompt", "edit"),
    [
        ("make head band red", "red"),
        ("flip it", "mirror"),
        ("a pencil sketch", "sketch"),
        ("black and white please", "grayscale"),
        ("blur the background", "blur"),
        ("bluer sky", "poster"),
        ("a blue sky", "blue"),
        ("covered in snow", "poster"),
    ],
)
def test_pick_edit_by_keyword(prompt: str, edit: str) -> None:
    """The prompt's keywords pick the edit; whole words only."""
    assert pick_edit(prompt) == edit


def test_edit_image_changes_pixels_and_keeps_size() -> None:
    """An edit keeps the input size unless asked, and visibly changes the image."""
    data = SAMPLE_PNG.read_bytes()
    edited = edit_image(data, "make it red", output_format="png")
    with Image.open(SAMPLE_PNG) as sample, Image.open(io.BytesIO(edited.data)) as result:
        assert result.size == sample.size == (edited.width, edited.height)
        assert result.tobytes() != sample.convert("RGB").tobytes()
    assert edit_image(data, "x", size=(20, 10)).width == 20


def test_sample_asset_is_a_small_png() -> None:
    """The bundled sample is a real PNG under 30 KB."""
    assert SAMPLE_PNG.stat().st_size < 30_000
    with Image.open(SAMPLE_PNG) as sample:
        assert sample.format == "PNG"


@given(st.binary(max_size=200), st.sampled_from(["image/png", "image/jpeg", ""]))
def test_data_uri_round_trips(data: bytes, mime: str) -> None:
    """Any bytes base64-encoded into a data URI decode back to themselves."""
    assert decode_data_uri(data_uri(data, mime)) == data


@pytest.mark.parametrize("uri", ["data:image/png,raw", "http://x/y.png", "data:image/png;base64,@@"])
def test_decode_data_uri_rejects_non_base64(uri: str) -> None:
    """Only base64 data URIs decode; anything else is an ImageError."""
    with pytest.raises(ImageError):
        decode_data_uri(uri)
