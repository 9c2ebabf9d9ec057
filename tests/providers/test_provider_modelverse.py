"""The Modelverse provider against its emulator over real HTTP: input checks, outcomes and error mapping."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.errors import AmbiguousError, GiveUpError, InputError, RetryLaterError
from receiver.models import JobStatus
from tests.helpers.images import data_uri, png_bytes
from tests.helpers.sync_apis import MODELVERSE, SMALL_URI, Harness, Served, on_shared_loop, serving, submit_answered

MODEL = MODELVERSE.model


async def proxy_error(request: Request) -> Response:
    """What a proxy in front of Modelverse may answer: not Modelverse's envelope."""
    return Response("<html>Bad Gateway</html>", status_code=int(request.path_params["status"]))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served() -> AsyncIterator[Served]:
    proxy = Route("/proxy/{status:int}/v1/images/generations", proxy_error, methods=["POST"])
    async with serving(MODELVERSE, proxy) as served:
        yield served


def test_validate_input_accepts_every_documented_field() -> None:
    """All of Modelverse's fields, in range, pass and come back as given."""
    data = {
        "prompt": "Convert to quick pencil sketch",
        "image": "https://umodelverse-inference.cn-wlcb.ufileos.com/a.png",
        "n": 4,
        "strength": 0,
        "seed": -1,
        "steps": 50,
        "guidance_scale": 10,
        "negative_prompt": "blurry, low quality",
        "response_format": "url",
    }
    assert MODELVERSE.offline_provider().validate_input(MODEL, data) == data
    assert (
        MODELVERSE.offline_provider().validate_input(MODEL, {"prompt": "p", "image": SMALL_URI})["image"] == SMALL_URI
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"image": None}, "image"),
        ({"image": "s3://bucket/a.png"}, "image"),
        ({"image": "data:text/plain;base64," + base64.b64encode(b"hello").decode()}, "image"),
        ({"n": 0}, "n"),
        ({"n": 5}, "n"),
        ({"strength": -0.1}, "strength"),
        ({"strength": 1.1}, "strength"),
        ({"seed": -2}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"steps": 0}, "steps"),
        ({"steps": 51}, "steps"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
        ({"guidance_scale": 11}, "guidance_scale"),
        ({"negative_prompt": 3}, "negative_prompt"),
        ({"response_format": "png"}, "response_format"),
        ({"size": "1024x1024"}, "size"),
    ],
    ids=[
        "prompt-missing",
        "prompt-empty",
        "image-missing",
        "image-s3",
        "image-not-an-image",
        "n-0",
        "n-5",
        "strength-low",
        "strength-high",
        "seed-below-minus-1",
        "seed-float",
        "steps-0",
        "steps-51",
        "guidance-low",
        "guidance-high",
        "negative-prompt-int",
        "format",
        "unknown-field",
    ],
)
def test_validate_input_refuses_a_bad_field(change: dict[str, Any], field: str) -> None:
    """Each bad or unknown field is refused with a message naming `input.<field>`."""
    data = {"prompt": "make it red", "image": SMALL_URI, **change}
    data = {name: value for name, value in data.items() if value is not None}
    with pytest.raises(InputError) as caught:
        MODELVERSE.offline_provider().validate_input(MODEL, data)
    assert f"input.{field}" in caught.value.message


def test_validate_input_accepts_bare_base64() -> None:
    """`image` may be bare base64 image data ("Base64 data or image link"): accepted and kept as given."""
    bare = SMALL_URI.split(",", 1)[1]
    assert MODELVERSE.offline_provider().validate_input(MODEL, {"prompt": "p", "image": bare})["image"] == bare


@pytest.mark.parametrize(
    "image",
    ["not base64!", base64.b64encode(b"hello").decode(), SMALL_URI.split(",", 1)[1] + "\n"],
    ids=["not-base64", "not-an-image", "trailing-newline"],
)
def test_validate_input_refuses_bare_base64_that_is_not_an_image(image: str) -> None:
    """Bare base64 must be strict base64 of a readable image; the message names input.image."""
    with pytest.raises(InputError) as caught:
        MODELVERSE.offline_provider().validate_input(MODEL, {"prompt": "p", "image": image})
    assert caught.value.message.startswith("input.image: ")


def test_validate_input_refuses_other_models() -> None:
    """An unknown model is refused with a message naming `model`."""
    with pytest.raises(InputError, match=r"^model: "):
        MODELVERSE.offline_provider().validate_input("step-image-edit-2", {"prompt": "p", "image": SMALL_URI})


@on_shared_loop
async def test_submit_defaults_to_b64_json_and_normalizes_every_image(harness: Harness) -> None:
    """Without response_format we ask for b64_json: n inline images, prefix stripped, type and size read."""
    submission = await harness.submit(n=2, seed=11, strength=0.8, steps=20, guidance_scale=2.5)
    outcome = submission.outcome
    assert outcome is not None and outcome.status is JobStatus.SUCCEEDED
    assert submission.urls == {}
    assert submission.request_id is not None
    images = outcome.result["images"]
    assert [image["inline"]["source"] for image in images] == ["data[0].b64_json", "data[1].b64_json"]
    assert {(image["content_type"], image["width"], image["height"], image["url"]) for image in images} == {
        ("image/png", 32, 24, None)
    }
    assert outcome.result["seed"] == 11
    assert outcome.provider_result["data"][0]["b64_json"].startswith("data:image/png;base64,")
    (sent,) = harness.emu.received
    assert sent == {
        "model": MODEL,
        "prompt": "make it red",
        "n": 2,
        "strength": 0.8,
        "seed": 11,
        "steps": 20,
        "guidance_scale": 2.5,
        "response_format": "b64_json",
    }


@on_shared_loop
async def test_submit_sends_bare_base64_as_given(harness: Harness) -> None:
    """A bare-base64 image is sent as given; Modelverse (the emulator) decodes it and the edit succeeds."""
    submission = await harness.submit(image=SMALL_URI.split(",", 1)[1])
    assert submission.outcome.status is JobStatus.SUCCEEDED, submission.outcome.error
    assert harness.emu.calls == 1


@on_shared_loop
async def test_submit_with_url_format_and_a_url_image(harness: Harness) -> None:
    """A URL input is passed through for Modelverse to download; response_format=url gives its URLs."""
    image_url = f"{harness.root}/images/sample.png"
    submission = await harness.submit(image=image_url, response_format="url", seed=-1)
    outcome = submission.outcome
    assert outcome is not None and outcome.status is JobStatus.SUCCEEDED
    (image,) = outcome.result["images"]
    assert image["url"].startswith(f"{harness.root}/modelverse/files/")
    assert outcome.result["seed"] is None  # -1 asks Modelverse for a random seed, which it does not report
    assert (await harness.client.get(image["url"])).status_code == 200


@on_shared_loop
@pytest.mark.parametrize(
    ("status", "code", "words"),
    [
        (400, "sensitive_check_error", "content check failed"),
        (401, "auth_error", "Validate Certification failed"),
    ],
    ids=["400-sensitive", "401"],
)
async def test_refusals_give_up_and_keep_the_request_id(harness: Harness, status: int, code: str, words: str) -> None:
    """400 and 401 fail the job with Modelverse's message and code, keeping `param` as the request id."""
    harness.emu.config.fail_statuses = [status]
    with pytest.raises(GiveUpError) as caught:
        await harness.submit()
    refusal = caught.value
    assert refusal.code == code
    assert words in refusal.message
    assert refusal.request_id is not None and len(refusal.request_id) == 32


@on_shared_loop
async def test_emulator_validation_error_gives_up_with_param_error(harness: Harness) -> None:
    """An input the emulator refuses (an image link that 404s) fails the job with param_error."""
    with pytest.raises(GiveUpError) as caught:
        await harness.submit(image=f"{harness.root}/images/missing.png")
    assert caught.value.code == "param_error"
    assert "404" in caught.value.message


@on_shared_loop
async def test_rate_limit_retries_later(harness: Harness) -> None:
    """A 429 `rate_limit` says the edit was not done: retry later, no sooner than Retry-After."""
    harness.emu.config.fail_statuses = [429]
    harness.emu.config.retry_after_s = 5
    with pytest.raises(RetryLaterError) as caught:
        await harness.submit()
    assert caught.value.code == "rate_limit"
    assert caught.value.retry_after_s == 5.0


@on_shared_loop
@pytest.mark.parametrize("status", [500, 502, 504], ids=["500", "502", "504"])
async def test_server_errors_outside_the_envelope_are_ambiguous(harness: Harness, status: int) -> None:
    """A 5xx that is not Modelverse's own envelope (a proxy's page) may follow a paid edit: AmbiguousError."""
    with pytest.raises(AmbiguousError, match=str(status)):
        await harness.submit(harness.provider(base_url=f"{harness.root}/proxy/{status}"))


@on_shared_loop
async def test_undocumented_status_in_the_envelope_is_ambiguous(harness: Harness) -> None:
    """A 502 is not in Modelverse's table, even in its envelope: it may have run, so it is not resent."""
    harness.emu.config.fail_statuses = [502]
    with pytest.raises(AmbiguousError):
        await harness.submit()


@pytest.mark.parametrize(
    ("item", "source"),
    [
        ({"b64_json": base64.b64encode(png_bytes(8, 8)).decode()}, "data[0].b64_json"),
        ({"b64_json": data_uri(png_bytes(8, 8)), "url": "https://x.ufileos.com/a.png"}, "data[0].b64_json"),
    ],
    ids=["bare-base64", "both-keys"],
)
async def test_b64_json_without_prefix_or_beside_a_url_is_inline(item: dict[str, str], source: str) -> None:
    """b64_json may be bare base64 or come with a url too (as the docs show): the inline copy is used."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"created": 1, "data": [item], "usage": {}})

    submission = await submit_answered(MODELVERSE, answer)
    assert submission.outcome is not None and submission.outcome.status is JobStatus.SUCCEEDED
    (image,) = submission.outcome.result["images"]
    assert (image["inline"]["source"], image["width"], image["url"]) == (source, 8, None)


async def test_unusable_200_fails_the_job() -> None:
    """A 200 we cannot read fails the job (provider_bad_response) instead of resending a paid edit."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"created": 1, "data": [{"revised_prompt": "x"}]})

    submission = await submit_answered(MODELVERSE, answer)
    assert submission.outcome is not None and submission.outcome.status is JobStatus.FAILED
    assert submission.outcome.error == {
        "code": "provider_bad_response",
        "message": "Modelverse's answer is unusable: data[0] has neither b64_json nor url",
    }
