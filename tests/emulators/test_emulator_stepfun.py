"""The StepFun emulator over real HTTP on loopback: the edit route, auth, validation, formats and faults."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from PIL import Image

from tests.helpers.clock import Clock
from tests.helpers.images import image_size, png_bytes
from tests.helpers.sync_apis import STEPFUN, EmulatorHarness, Served, on_shared_loop, serving

FIELDS = {"model": STEPFUN.model, "prompt": "make it red"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served() -> AsyncIterator[Served]:
    async with serving(STEPFUN, clock=Clock()) as served:
        yield served


async def edit(
    harness: EmulatorHarness, *, image: bytes | None = None, files: list[tuple[str, Any]] | None = None, **fields: Any
) -> httpx.Response:
    data = {**FIELDS, **{name: str(value) for name, value in fields.items()}}
    if files is None:
        files = [("image", ("input.png", image if image is not None else png_bytes(), "image/png"))]
    return await harness.client.post("/v1/images/edits", data=data, files=files)


def envelope(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type"}
    error: dict[str, Any] = body["error"]
    return error


@on_shared_loop
async def test_b64_json_answer_is_an_edited_png_of_the_input_size(harness: EmulatorHarness) -> None:
    """response_format=b64_json answers 200 with the seed, `success` and a real edited image, same size."""
    source = png_bytes(32, 24)
    response = await edit(harness, image=source, response_format="b64_json", seed=7, steps=8, cfg_scale=1.0)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"]
    body = response.json()
    assert isinstance(body["created"], int)
    (item,) = body["data"]
    assert (item["seed"], item["finish_reason"]) == (7, "success")
    assert "url" not in item
    edited = base64.b64decode(item["b64_json"])
    with Image.open(io.BytesIO(edited)) as image, Image.open(io.BytesIO(source)) as original:
        assert (image.format, image.size) == ("PNG", (32, 24))
        assert image.convert("RGB").tobytes() != original.convert("RGB").tobytes()
    assert harness.emu.calls == 1
    assert harness.emu.received[0]["seed"] == "7"


@on_shared_loop
async def test_url_answer_is_served_until_it_expires(harness: EmulatorHarness) -> None:
    """By default the answer is a URL under the mount, served as PNG until url_ttl_s has passed."""
    harness.configure(url_ttl_s=100)
    response = await edit(harness)
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    assert "b64_json" not in item
    assert isinstance(item["seed"], int)
    assert item["url"].startswith(f"{harness.root}/stepfun/files/")
    served = await harness.client.get(item["url"])
    assert (served.status_code, served.headers["content-type"]) == (200, "image/png")
    assert image_size(served.content) == (32, 24)
    harness.clock.advance(101)
    assert (await harness.client.get(item["url"])).status_code == 404


@on_shared_loop
@pytest.mark.parametrize("text", ["data:image/png;base64,{b64}", "{b64}"], ids=["data-uri", "bare-base64"])
async def test_image_may_come_as_base64_text(harness: EmulatorHarness, text: str) -> None:
    """An `image` text field holding a data URI or bare base64 is accepted as the input image."""
    image = text.format(b64=base64.b64encode(png_bytes(10, 12)).decode())
    response = await edit(harness, files=[("image", (None, image))], response_format="b64_json")
    assert response.status_code == 200, response.text
    edited = base64.b64decode(response.json()["data"][0]["b64_json"])
    assert image_size(edited) == (10, 12)


@on_shared_loop
@pytest.mark.parametrize(
    ("api_key", "header", "expected"),
    [
        (None, None, 401),
        (None, "Key abc", 401),
        (None, "Bearer", 401),
        (None, "Bearer anything", 200),
        ("secret", "Bearer wrong", 401),
        ("secret", "Bearer secret", 200),
    ],
    ids=["none", "key-scheme", "bare-bearer", "any-bearer", "wrong-key", "right-key"],
)
async def test_edit_checks_the_bearer_key(
    harness: EmulatorHarness, api_key: str | None, header: str | None, expected: int
) -> None:
    """Without a matching `Authorization: Bearer` the edit answers 401 invalid_api_key."""
    harness.configure(api_key=api_key)
    headers = {"Authorization": header} if header is not None else {}
    async with httpx.AsyncClient(base_url=f"{harness.root}/stepfun", headers=headers, trust_env=False) as client:
        files = {"image": ("a.png", png_bytes(), "image/png")}
        response = await client.post("/v1/images/edits", data=FIELDS, files=files)
    assert response.status_code == expected
    if expected == 401:
        assert envelope(response) == {"message": "Incorrect API key provided", "type": "invalid_api_key"}


@on_shared_loop
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 513}, "prompt"),
        ({"model": ""}, "model"),
        ({"model": "dall-e-2"}, "model"),
        ({"steps": 0}, "steps"),
        ({"steps": 51}, "steps"),
        ({"steps": "many"}, "steps"),
        ({"cfg_scale": 0.5}, "cfg_scale"),
        ({"cfg_scale": 10.5}, "cfg_scale"),
        ({"cfg_scale": "nan"}, "cfg_scale"),
        ({"seed": -1}, "seed"),
        ({"seed": 2_147_483_648}, "seed"),
        ({"negative_prompt": "x" * 513}, "negative_prompt"),
        ({"text_mode": "maybe"}, "text_mode"),
        ({"response_format": "jpeg"}, "response_format"),
    ],
    ids=[
        "empty-prompt",
        "long-prompt",
        "no-model",
        "unknown-model",
        "steps-0",
        "steps-51",
        "steps-not-int",
        "cfg-low",
        "cfg-high",
        "cfg-nan",
        "seed-negative",
        "seed-too-big",
        "long-negative-prompt",
        "text-mode-not-bool",
        "bad-format",
    ],
)
async def test_invalid_fields_answer_400_naming_the_field(
    harness: EmulatorHarness, fields: dict[str, Any], field: str
) -> None:
    """A field outside StepFun's documented range answers 400 invalid_request_error naming it."""
    response = await edit(harness, **fields)
    assert response.status_code == 400
    error = envelope(response)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{field}:")


@on_shared_loop
@pytest.mark.parametrize(
    ("files", "words"),
    [
        ([], "image: is required"),
        ([("image", ("a.png", png_bytes(), "image/png")), ("image", ("b.png", png_bytes(), "image/png"))], "only one"),
        ([("image", ("big.png", png_bytes(4097, 8), "image/png"))], "4097x8 is larger than 4096x4096"),
        ([("image", ("a.txt", b"not an image", "text/plain"))], "image: cannot decode"),
    ],
    ids=["missing", "two-images", "too-large", "not-an-image"],
)
async def test_image_checks_answer_400(harness: EmulatorHarness, files: list[tuple[str, Any]], words: str) -> None:
    """One readable image of at most 4096x4096 is required."""
    response = await edit(harness, files=files or [("size", (None, "1024x1024"))])  # multipart, but no image
    assert response.status_code == 400
    assert words in envelope(response)["message"]


@on_shared_loop
async def test_non_multipart_body_answers_400(harness: EmulatorHarness) -> None:
    """A JSON body is refused: the endpoint takes multipart/form-data only."""
    response = await harness.client.post("/v1/images/edits", json={**FIELDS, "image": "data:,"})
    assert response.status_code == 400
    assert "multipart/form-data" in envelope(response)["message"]


@on_shared_loop
@pytest.mark.parametrize(
    ("status", "type_", "retry_after"),
    [
        (400, "invalid_request_error", None),
        (402, "insufficient_balance", None),
        (429, "rate_limit_exceeded", "2"),
        (451, "content_moderation", None),
        (500, "server_error", None),
        (503, "engine_overloaded", "2"),
    ],
    ids=["400", "402", "429", "451", "500", "503"],
)
async def test_injected_failure_is_answered_once(
    harness: EmulatorHarness, status: int, type_: str, retry_after: str | None
) -> None:
    """Each listed fail_status answers one call in StepFun's envelope (429/503 with Retry-After), then edits run."""
    harness.configure(fail_statuses=[status], retry_after_s=2)
    failed = await edit(harness)
    assert failed.status_code == status
    assert envelope(failed)["type"] == type_
    assert failed.headers.get("retry-after") == retry_after
    assert harness.emu.config.fail_statuses == []
    assert (await edit(harness)).status_code == 200
    assert harness.emu.calls == 2


@on_shared_loop
async def test_failures_are_consumed_in_order(harness: EmulatorHarness) -> None:
    """Several fail_statuses answer the next calls in order; an unlisted status gets a generic envelope."""
    harness.configure(fail_statuses=[429, 599], retry_after_s=None)
    first, second, third = [await edit(harness) for _ in range(3)]
    assert (first.status_code, second.status_code, third.status_code) == (429, 599, 200)
    assert "retry-after" not in first.headers
    assert envelope(second)["type"] == "server_error"


@on_shared_loop
async def test_content_filtered_answers_200_with_the_reason(harness: EmulatorHarness) -> None:
    """content_filtered: the call succeeds but data[0].finish_reason is content_filtered."""
    harness.configure(content_filtered=True)
    response = await edit(harness, response_format="b64_json")
    assert response.status_code == 200
    (item,) = response.json()["data"]
    assert item["finish_reason"] == "content_filtered"
    assert item["b64_json"]


@on_shared_loop
async def test_control_routes_show_and_change_the_config(harness: EmulatorHarness) -> None:
    """GET/POST /_emulator/config read and validate changes; the API key is masked and kept when echoed."""
    config = (await harness.client.post("/_emulator/config", json={"api_key": "k", "fail_statuses": [451]})).json()
    assert (config["api_key"], config["fail_statuses"]) == ("**********", [451])
    again = (await harness.client.post("/_emulator/config", json=config)).json()
    assert again["api_key"] == "**********"
    assert harness.emu.config.api_key == "k"
    assert (await harness.client.post("/_emulator/config", json={"latency_s": -1})).status_code == 422
    assert (await harness.client.post("/_emulator/config", json={"nope": 1})).status_code == 422
    assert (await harness.client.post("/_emulator/config", json=[1])).status_code == 422
    assert (await harness.client.get("/_emulator/config")).json()["fail_statuses"] == [451]
