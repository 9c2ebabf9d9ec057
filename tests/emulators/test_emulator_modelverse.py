"""The Modelverse emulator over real HTTP on loopback: the generations route, auth, validation, formats, faults."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from receiver.emulators.modelverse import ModelverseEmulatorConfig
from tests.helpers.clock import Clock
from tests.helpers.images import data_uri, image_size, png_bytes
from tests.helpers.sync_apis import MODELVERSE, EmulatorHarness, Served, on_shared_loop, serving

MODEL = MODELVERSE.model
SEVEN_DAYS_S = 7 * 24 * 3600


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served() -> AsyncIterator[Served]:
    async with serving(MODELVERSE, clock=Clock()) as served:
        yield served


async def generate(harness: EmulatorHarness, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "prompt": "make it red", "image": data_uri(png_bytes()), **fields}
    return await harness.client.post("/v1/images/generations", json=body)


def envelope(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == response.headers["x-request-id"]  # `param` carries the request id
    return error


@on_shared_loop
async def test_b64_json_answer_has_n_images_with_a_data_uri_prefix(harness: EmulatorHarness) -> None:
    """response_format=b64_json answers n images as `data:image/png;base64,...`, each the input's size."""
    response = await generate(harness, n=2, response_format="b64_json", seed=3, strength=0.5, guidance_scale=2.5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"] == {"input_tokens_details": {}}
    assert isinstance(body["created"], int)
    assert len(body["data"]) == 2
    for item in body["data"]:
        assert set(item) == {"b64_json"}
        prefix, _, payload = item["b64_json"].partition(",")
        assert prefix == "data:image/png;base64"
        assert image_size(base64.b64decode(payload)) == (32, 24)
    assert harness.emu.calls == 1
    assert harness.emu.received == [
        {
            "model": MODEL,
            "prompt": "make it red",
            "n": 2,
            "response_format": "b64_json",
            "seed": 3,
            "strength": 0.5,
            "guidance_scale": 2.5,
        }
    ]


@on_shared_loop
async def test_url_answer_is_served_for_seven_days(harness: EmulatorHarness) -> None:
    """By default the answer is a URL under the mount, served as PNG for 7 days, then 404."""
    response = await generate(harness)
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    assert item["url"].startswith(f"{harness.root}/modelverse/files/")
    harness.clock.advance(SEVEN_DAYS_S - 60)
    served = await harness.client.get(item["url"])
    assert (served.status_code, served.headers["content-type"]) == (200, "image/png")
    harness.clock.advance(61)
    assert (await harness.client.get(item["url"])).status_code == 404


@on_shared_loop
@pytest.mark.parametrize(
    ("image", "size"),
    [("{root}/images/wide.png", (20, 10)), ("{b64}", (32, 24))],
    ids=["url", "bare-base64"],
)
async def test_image_may_be_a_link_or_bare_base64(harness: EmulatorHarness, image: str, size: tuple[int, int]) -> None:
    """A link is downloaded by the emulator; bare base64 decodes like a data URI."""
    image = image.format(root=harness.root, b64=base64.b64encode(png_bytes()).decode())
    response = await generate(harness, image=image, response_format="b64_json")
    assert response.status_code == 200, response.text
    payload = response.json()["data"][0]["b64_json"].partition(",")[2]
    assert image_size(base64.b64decode(payload)) == size


@on_shared_loop
@pytest.mark.parametrize(
    ("image", "words"),
    [
        ("{root}/images/missing.png", "download failed with HTTP 404"),
        ("http://127.0.0.1:9/x.png", "download failed: ConnectError"),
        ("@@@", "image: "),
        ("{big}", "4097x8 is larger than 4096x4096"),
    ],
    ids=["link-404", "link-unreachable", "not-base64", "too-large"],
)
async def test_unusable_image_answers_param_error(harness: EmulatorHarness, image: str, words: str) -> None:
    """An image that cannot be downloaded, decoded or is over 4096 px answers 400 param_error."""
    image = image.format(root=harness.root, big=data_uri(png_bytes(4097, 8)))
    response = await generate(harness, image=image)
    assert response.status_code == 400
    error = envelope(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", "param_error")
    assert words in error["message"]


@on_shared_loop
@pytest.mark.parametrize(
    ("api_key", "header", "expected"),
    [
        (None, None, 401),
        (None, "Basic abc", 401),
        (None, "Bearer anything", 200),
        ("secret", "Bearer wrong", 401),
        ("secret", "Bearer secret", 200),
    ],
    ids=["none", "basic", "any-bearer", "wrong-key", "right-key"],
)
async def test_generation_checks_the_bearer_key(
    harness: EmulatorHarness, api_key: str | None, header: str | None, expected: int
) -> None:
    """Without a matching `Authorization: Bearer` the call answers 401 auth_error with a request id."""
    harness.configure(api_key=api_key)
    headers = {"Authorization": header} if header is not None else {}
    body = {"model": MODEL, "prompt": "x", "image": data_uri(png_bytes())}
    async with httpx.AsyncClient(base_url=f"{harness.root}/modelverse", headers=headers, trust_env=False) as client:
        response = await client.post("/v1/images/generations", json=body)
    assert response.status_code == expected
    if expected == 401:
        error = envelope(response)
        assert (error["code"], error["message"]) == ("auth_error", "Validate Certification failed")


@on_shared_loop
@pytest.mark.parametrize(
    ("fields", "field", "code"),
    [
        ({"model": "other/model"}, "model", "model_error"),
        ({"model": None}, "model", "param_error"),
        ({"prompt": ""}, "prompt", "param_error"),
        ({"image": 5}, "image", "param_error"),
        ({"n": 0}, "n", "param_error"),
        ({"n": 5}, "n", "param_error"),
        ({"n": 1.5}, "n", "param_error"),
        ({"strength": 1.5}, "strength", "param_error"),
        ({"strength": "high"}, "strength", "param_error"),
        ({"seed": -2}, "seed", "param_error"),
        ({"seed": True}, "seed", "param_error"),
        ({"steps": 0}, "steps", "param_error"),
        ({"steps": 51}, "steps", "param_error"),
        ({"guidance_scale": 0.5}, "guidance_scale", "param_error"),
        ({"guidance_scale": 11}, "guidance_scale", "param_error"),
        ({"negative_prompt": 3}, "negative_prompt", "param_error"),
        ({"response_format": "png"}, "response_format", "param_error"),
    ],
    ids=[
        "unknown-model",
        "no-model",
        "empty-prompt",
        "image-not-str",
        "n-0",
        "n-5",
        "n-float",
        "strength-high",
        "strength-str",
        "seed-below-minus-1",
        "seed-bool",
        "steps-0",
        "steps-51",
        "guidance-low",
        "guidance-high",
        "negative-prompt-not-str",
        "bad-format",
    ],
)
async def test_invalid_fields_answer_400_naming_the_field(
    harness: EmulatorHarness, fields: dict[str, Any], field: str, code: str
) -> None:
    """A field outside Modelverse's documented range answers 400 (param_error, or model_error) naming it."""
    response = await generate(harness, **fields)
    assert response.status_code == 400
    error = envelope(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    assert error["message"].startswith(f"{field}:")


@on_shared_loop
@pytest.mark.parametrize(
    "content", [b"{not json", b"[1, 2]", b"Infinity"], ids=["not-json", "not-an-object", "bare-constant"]
)
async def test_body_must_be_a_json_object(harness: EmulatorHarness, content: bytes) -> None:
    """A body that is not a JSON object answers 400 param_error."""
    headers = {"Content-Type": "application/json"}
    response = await harness.client.post("/v1/images/generations", content=content, headers=headers)
    assert response.status_code == 400
    assert envelope(response)["code"] == "param_error"


@on_shared_loop
@pytest.mark.parametrize(
    ("status", "type_", "code", "retry_after"),
    [
        (400, "invalid_request_error", "sensitive_check_error", None),
        (401, "invalid_request_error", "auth_error", None),
        (408, "timeout", "timeout", None),
        (429, "rate_limit_error", "rate_limit", "4"),
        (500, "internal_error", "internal_error", None),
        (504, "timeout", "gateway_timeout_error", None),
        (502, "internal_error", "internal_error", None),
    ],
    ids=["400-sensitive", "401", "408", "429", "500", "504", "unlisted-502"],
)
async def test_injected_failure_is_answered_once(
    harness: EmulatorHarness, status: int, type_: str, code: str, retry_after: str | None
) -> None:
    """Each listed fail_status answers one call in Modelverse's envelope with a request id, then calls run."""
    harness.configure(fail_statuses=[status], retry_after_s=4)
    failed = await generate(harness)
    assert failed.status_code == status
    error = envelope(failed)
    assert (error["type"], error["code"]) == (type_, code)
    assert len(error["param"]) == 32
    assert failed.headers.get("retry-after") == retry_after
    assert (await generate(harness)).status_code == 200
    assert harness.emu.calls == 2


@on_shared_loop
async def test_control_routes_show_and_change_the_config(harness: EmulatorHarness) -> None:
    """GET/POST /_emulator/config read and validate changes; result URLs default to 7 days."""
    assert (await harness.client.get("/_emulator/config")).json()["url_ttl_s"] == SEVEN_DAYS_S
    config = (await harness.client.post("/_emulator/config", json={"fail_statuses": [429, 504]})).json()
    assert config["fail_statuses"] == [429, 504]
    assert (await harness.client.post("/_emulator/config", json={"fail_statuses": [200]})).status_code == 422
    assert isinstance(harness.emu.config, ModelverseEmulatorConfig)
    assert harness.emu.config.fail_statuses == [429, 504]
