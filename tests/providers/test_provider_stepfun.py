"""The StepFun provider against its emulator over real HTTP: input checks, outcomes and error mapping."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from starlette.routing import Route

from receiver.emulators.stepfun import StepFunEmulator, StepFunEmulatorConfig
from receiver.errors import AmbiguousError, GiveUpError, InputError, RetryLaterError
from receiver.images.download import FetchPolicy
from receiver.models import JobStatus
from receiver.providers.stepfun import StepFunProvider
from receiver.web.asgi_server import running_server
from tests.helpers.images import data_uri, image_route, png_bytes, png_data_uri
from tests.helpers.jobs import make_job
from tests.helpers.servers import mounted, refusing_url, silent_server

KEY = "test-step-key"
MODEL = "step-image-edit-2"
LOCAL = FetchPolicy(allow_private=True, timeout_s=5.0)
on_shared_loop = pytest.mark.asyncio(loop_scope="module")


SMALL_URI = png_data_uri(32, 24)


@dataclass
class Served:
    emu: StepFunEmulator
    root: str


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served() -> AsyncIterator[Served]:
    emu = StepFunEmulator()
    async with running_server(mounted(emu, "/stepfun", Route("/images/{name}", image_route))) as root:
        yield Served(emu, root)


@dataclass
class Harness:
    emu: StepFunEmulator
    client: httpx.AsyncClient
    root: str

    def provider(
        self, *, base_url: str | None = None, key: str | None = KEY, policy: FetchPolicy = LOCAL, timeout_s: float = 30
    ) -> StepFunProvider:
        return StepFunProvider(
            self.client,
            base_url=base_url or f"{self.root}/stepfun",
            key=SecretStr(key) if key is not None else None,
            timeout_s=timeout_s,
            fetch_policy=policy,
        )

    async def submit(self, provider: StepFunProvider | None = None, **input: Any) -> Any:
        job = make_job("stepfun", MODEL, {"prompt": "make it red", "image": SMALL_URI, **input})
        return await (provider or self.provider()).submit(job, webhook_url=None)


@pytest_asyncio.fixture(loop_scope="module")
async def harness(served: Served) -> AsyncIterator[Harness]:
    served.emu.config = StepFunEmulatorConfig(latency_s=0.0, api_key=KEY)
    served.emu.calls = 0
    served.emu.received.clear()
    async with httpx.AsyncClient(trust_env=False) as client:
        yield Harness(served.emu, client, served.root)


def test_class_and_instance_facts() -> None:
    """StepFun is synchronous: no webhooks; name, models and limits as configured."""
    provider = StepFunProvider(
        httpx.AsyncClient(),
        base_url="https://api.stepfun.ai/",
        key=None,
        timeout_s=180,
        fetch_policy=FetchPolicy(),
        concurrency=5,
        rate_per_min=10,
    )
    assert (provider.name, provider.models) == ("stepfun", ("step-image-edit-2",))
    assert (provider.synchronous, provider.webhooks, provider.concurrency, provider.rate_per_min) == (
        True,
        False,
        5,
        10,
    )
    assert provider.base_url == "https://api.stepfun.ai"
    assert not provider.is_configured()


def test_validate_input_accepts_every_documented_field() -> None:
    """All of StepFun's fields, in range, pass and come back as given."""
    provider = StepFunProvider(httpx.AsyncClient(), base_url="x", key=None, timeout_s=120, fetch_policy=LOCAL)
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
    provider = StepFunProvider(httpx.AsyncClient(), base_url="x", key=None, timeout_s=120, fetch_policy=LOCAL)
    data = {"prompt": "make it red", "image": SMALL_URI, **change}
    data = {name: value for name, value in data.items() if value is not None}
    with pytest.raises(InputError) as caught:
        provider.validate_input(MODEL, data)
    assert f"input.{field}" in caught.value.message


def test_validate_input_refuses_other_models_and_non_objects() -> None:
    """An unknown model is refused naming `model`; an input that is not an object naming `input`."""
    provider = StepFunProvider(httpx.AsyncClient(), base_url="x", key=None, timeout_s=120, fetch_policy=LOCAL)
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
async def test_wrong_key_gives_up(harness: Harness) -> None:
    """A key StepFun does not know gives up with invalid_api_key, and the key is not in the message."""
    with pytest.raises(GiveUpError) as caught:
        await harness.submit(harness.provider(key="wrong-key"))
    assert caught.value.code == "invalid_api_key"
    assert "wrong-key" not in caught.value.message


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


@on_shared_loop
@pytest.mark.parametrize("status", [408, 500, 504], ids=["408", "500", "504"])
async def test_timeouts_and_server_errors_are_ambiguous(harness: Harness, status: int) -> None:
    """A 408, 500 or 504 may come after a paid edit: AmbiguousError (provider_outcome_unknown), never resent."""
    harness.emu.config.fail_statuses = [status]
    with pytest.raises(AmbiguousError, match=str(status)) as caught:
        await harness.submit()
    assert caught.value.code == "provider_outcome_unknown"
    assert harness.emu.calls == 1


@on_shared_loop
async def test_read_timeout_after_sending_is_ambiguous(harness: Harness) -> None:
    """A call that was sent but never answered may have run: AmbiguousError."""
    async with silent_server() as url:
        with pytest.raises(AmbiguousError, match="outcome unknown"):
            await harness.submit(harness.provider(base_url=url, timeout_s=0.2))


@on_shared_loop
async def test_connection_refused_retries_later(harness: Harness) -> None:
    """Nothing listening: the call never left, so it is retried later."""
    with refusing_url() as url, pytest.raises(RetryLaterError) as caught:
        await harness.submit(harness.provider(base_url=url))
    assert caught.value.code == "provider_unreachable"


@on_shared_loop
async def test_missing_key_gives_up_before_calling(harness: Harness) -> None:
    """Without STEP_API_KEY the job fails as not configured; nothing is sent."""
    with pytest.raises(GiveUpError) as caught:
        await harness.submit(harness.provider(key=None))
    assert caught.value.code == "provider_not_configured"
    assert harness.emu.calls == 0


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

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        provider = StepFunProvider(
            client, base_url="https://api.stepfun.test", key=SecretStr(KEY), timeout_s=120, fetch_policy=LOCAL
        )
        submission = await provider.submit(
            make_job("stepfun", MODEL, {"prompt": "p", "image": SMALL_URI}), webhook_url=None
        )
    assert submission.outcome is not None and submission.outcome.status is JobStatus.FAILED
    assert submission.outcome.error is not None
    assert submission.outcome.error["code"] == "provider_bad_response"
    assert words in submission.outcome.error["message"]
