"""The StepFun provider against its emulator over real HTTP: input checks, outcomes and error mapping."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from receiver.errors import GiveUpError, InputError, RetryLaterError
from receiver.images.download import FetchPolicy
from receiver.models import JobStatus
from tests.helpers.images import data_uri, png_bytes
from tests.helpers.sync_apis import SMALL_URI, STEPFUN, Harness, Served, on_shared_loop, serving, submit_answered

MODEL = STEPFUN.model
LOCAL = STEPFUN.policy  # loopback hosts allowed


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served() -> AsyncIterator[Served]:
    async with serving(STEPFUN) as served:
        yield served


def test_validate_input_accepts_every_documented_field() -> None:
    """All of StepFun's fields, in range, pass and come back as given."""
    provider = STEPFUN.offline_provider()
    data = {
        "prompt": "x" * 512,
        "image": SMALL_URI,
        "seed": 2_147_483_647,
        "steps": 50,
        "cfg_scale": 10,
        "size": "1024x1024",
        "negative_prompt": "",
        "text_mode": True,
        "response_format": "url",
    }
    assert provider.validate_input(MODEL, data) == data
    assert provider.validate_input(MODEL, {"prompt": "p", "image": "https://example.com/a.png"})["prompt"] == "p"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 513}, "prompt"),
        ({"image": None}, "image"),
        ({"image": "ftp://example.com/a.png"}, "image"),
        ({"image": "data:image/png;base64"}, "image"),
        ({"image": "data:text/plain;base64," + base64.b64encode(b"hello").decode()}, "image"),
        ({"image": data_uri(png_bytes(4097, 8))}, "image"),
        ({"seed": -1}, "seed"),
        ({"seed": 2_147_483_648}, "seed"),
        ({"seed": "7"}, "seed"),
        ({"steps": 0}, "steps"),
        ({"steps": 51}, "steps"),
        ({"cfg_scale": 0.9}, "cfg_scale"),
        ({"cfg_scale": 10.1}, "cfg_scale"),
        ({"negative_prompt": "x" * 513}, "negative_prompt"),
        ({"text_mode": "yes"}, "text_mode"),
        ({"size": 1024}, "size"),
        ({"response_format": "png"}, "response_format"),
        ({"num_images": 2}, "num_images"),
    ],
    ids=[
        "prompt-missing",
        "prompt-empty",
        "prompt-long",
        "image-missing",
        "image-ftp",
        "image-bad-data-uri",
        "image-not-an-image",
        "image-over-4096",
        "seed-negative",
        "seed-too-big",
        "seed-str",
        "steps-0",
        "steps-51",
        "cfg-low",
        "cfg-high",
        "negative-prompt-long",
        "text-mode-str",
        "size-int",
        "format",
        "unknown-field",
    ],
)
def test_validate_input_refuses_a_bad_field(change: dict[str, Any], field: str) -> None:
    """Each bad or unknown field is refused with a message naming `input.<field>`."""
    provider = STEPFUN.offline_provider()
    data = {"prompt": "make it red", "image": SMALL_URI, **change}
    data = {name: value for name, value in data.items() if value is not None}
    with pytest.raises(InputError) as caught:
        provider.validate_input(MODEL, data)
    assert f"input.{field}" in caught.value.message


def test_validate_input_refuses_other_models_and_non_objects() -> None:
    """An unknown model is refused naming `model`; an input that is not an object naming `input`."""
    provider = STEPFUN.offline_provider()
    with pytest.raises(InputError, match=r"^model: "):
        provider.validate_input("step-1x-edit", {"prompt": "p", "image": SMALL_URI})
    with pytest.raises(InputError, match=r"^input: "):
        provider.validate_input(MODEL, ["not", "an", "object"])


@on_shared_loop
async def test_submit_defaults_to_b64_json_and_normalizes_the_inline_image(harness: Harness) -> None:
    """Without response_format we ask for b64_json: the image is inline, with its type and size read."""
    submission = await harness.submit(seed=7, steps=8, cfg_scale=7.5, text_mode=True, negative_prompt="blur")
    outcome = submission.outcome
    assert outcome is not None and outcome.status is JobStatus.SUCCEEDED
    assert submission.urls == {}
    assert submission.request_id is not None and len(submission.request_id) == 32
    assert outcome.result == {
        "images": [
            {
                "url": None,
                "inline": {"source": "data[0].b64_json", "bytes": outcome.result["images"][0]["inline"]["bytes"]},
                "content_type": "image/png",
                "width": 32,
                "height": 24,
            }
        ],
        "seed": 7,
        "nsfw": None,
        "timings": None,
    }
    assert outcome.provider_result["data"][0]["finish_reason"] == "success"
    assert submission.body.startswith(b"{")
    (sent,) = harness.emu.received
    assert sent == {
        "model": MODEL,
        "prompt": "make it red",
        "response_format": "b64_json",
        "seed": "7",
        "steps": "8",
        "cfg_scale": "7.5",
        "negative_prompt": "blur",
        "text_mode": "true",
    }


@on_shared_loop
async def test_submit_with_url_format_gives_the_providers_url(harness: Harness) -> None:
    """response_format=url is honoured: the normalized image is the emulator's file URL."""
    submission = await harness.submit(response_format="url", text_mode=False)
    assert submission.outcome is not None and submission.outcome.status is JobStatus.SUCCEEDED
    (image,) = submission.outcome.result["images"]
    assert image["url"].startswith(f"{harness.root}/stepfun/files/")
    assert (image["inline"], image["width"]) == (None, None)
    assert harness.emu.received[0]["text_mode"] == "false"
    assert (await harness.client.get(image["url"])).status_code == 200


@on_shared_loop
async def test_content_filtered_is_a_failed_outcome(harness: Harness) -> None:
    """A 200 with finish_reason content_filtered fails the job with code content_filtered."""
    harness.emu.config.content_filtered = True
    submission = await harness.submit()
    outcome = submission.outcome
    assert outcome is not None and outcome.status is JobStatus.FAILED
    assert outcome.error is not None and outcome.error["code"] == "content_filtered"
    assert "content filter" in outcome.error["message"]
    assert outcome.result is None


@on_shared_loop
async def test_image_url_is_fetched_from_a_loopback_host_when_allowed(harness: Harness) -> None:
    """A URL input is downloaded by us and uploaded; loopback hosts pass with allow_private."""
    submission = await harness.submit(image=f"{harness.root}/images/sample.png")
    assert submission.outcome is not None and submission.outcome.status is JobStatus.SUCCEEDED
    assert submission.outcome.result["images"][0]["width"] == 32


@on_shared_loop
@pytest.mark.parametrize(
    ("name", "policy", "code"),
    [
        ("sample.png", FetchPolicy(), "bad_input_url"),
        ("big.png", LOCAL, "bad_input_image"),
        ("missing.png", LOCAL, "bad_input_url"),
    ],
    ids=["private-host-refused", "over-4096", "not-found"],
)
async def test_unusable_image_url_gives_up_before_calling(
    harness: Harness, name: str, policy: FetchPolicy, code: str
) -> None:
    """A private host (without allow_private), an image over 4096 px or a 404 fail the job; StepFun is not called."""
    with pytest.raises(GiveUpError) as caught:
        await harness.submit(harness.provider(policy=policy), image=f"{harness.root}/images/{name}")
    assert caught.value.code == code
    assert harness.emu.calls == 0


@on_shared_loop
@pytest.mark.parametrize(
    ("status", "code", "words"),
    [
        (400, "invalid_request_error", "could not be processed"),
        (401, "invalid_api_key", "Incorrect API key provided"),
        (402, "insufficient_balance", "balance"),
        (404, "not_found", "not found"),
        (451, "content_moderation", "content moderation"),
    ],
    ids=["400", "401", "402", "404", "451"],
)
async def test_refusals_give_up_with_the_providers_message_and_type(
    harness: Harness, status: int, code: str, words: str
) -> None:
    """400/401/402/404/451 fail the job with StepFun's message and its `type` as the code."""
    harness.emu.config.fail_statuses = [status]
    with pytest.raises(GiveUpError) as caught:
        await harness.submit()
    assert caught.value.request_id is not None  # error answers carry X-Request-Id too, as the OpenAI SDK reads
    assert caught.value.code == code
    assert words in caught.value.message
    assert f"({status})" in caught.value.message


@on_shared_loop
@pytest.mark.parametrize("status", [429, 503], ids=["429", "503"])
async def test_busy_answers_retry_later_after_retry_after(harness: Harness, status: int) -> None:
    """429 and 503 were not processed: retry later, no sooner than Retry-After."""
    harness.emu.config.fail_statuses = [status]
    harness.emu.config.retry_after_s = 7
    with pytest.raises(RetryLaterError) as caught:
        await harness.submit()
    assert caught.value.retry_after_s == 7.0
    assert str(status) in caught.value.message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>", "unreadable"),
        (b'{"data": []}', "unreadable"),
        (b'{"data": [{"seed": 1, "finish_reason": "success"}]}', "neither b64_json nor url"),
        (b'{"data": [{"b64_json": "@@"}]}', "not a PNG, JPEG, WebP or GIF image"),
        (b'{"data": [{"b64_json": "data:image/png,raw"}]}', "not base64"),
    ],
    ids=["not-json", "no-items", "no-image", "not-an-image", "bad-data-uri"],
)
async def test_unusable_200_fails_the_job(body: bytes, words: str) -> None:
    """A 200 we cannot read fails the job (provider_bad_response) instead of resending a paid edit."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    submission = await submit_answered(STEPFUN, answer)
    assert submission.outcome is not None and submission.outcome.status is JobStatus.FAILED
    assert submission.outcome.error is not None
    assert submission.outcome.error["code"] == "provider_bad_response"
    assert words in submission.outcome.error["message"]
