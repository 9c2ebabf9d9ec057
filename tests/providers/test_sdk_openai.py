"""The OpenAI Python SDK, which StepFun and Modelverse document as their client, against their emulators."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from receiver.emulators import (
    Emulators,
    ModelverseEmulator,
    ModelverseEmulatorConfig,
    StepFunEmulator,
    StepFunEmulatorConfig,
    create_emulator_app,
)
from receiver.web.asgi_server import running_server
from tests.helpers.images import image_size, png_bytes, served_image_size
from tests.helpers.tls import emulate_tls

STEPFUN_MODEL = "step-image-edit-2"
MODELVERSE_MODEL = "stepfun-ai/step1x-edit"


def png_file(width: int = 32, height: int = 24) -> tuple[str, bytes, str]:
    return ("input.png", png_bytes(width, height), "image/png")


@dataclass
class Providers:
    stepfun_emu: StepFunEmulator
    modelverse_emu: ModelverseEmulator
    # base_url is the SDK's documented way to reach an OpenAI-compatible API (both providers' docs use it).
    stepfun: openai.AsyncOpenAI
    modelverse: openai.AsyncOpenAI
    http: httpx.AsyncClient  # plain client on the emulators' root, to fetch output files


@pytest_asyncio.fixture
async def providers() -> AsyncIterator[Providers]:
    stepfun = StepFunEmulator(StepFunEmulatorConfig(latency_s=0.0))
    modelverse = ModelverseEmulator(ModelverseEmulatorConfig(latency_s=0.0))
    app = create_emulator_app(emulators=Emulators(stepfun=stepfun, modelverse=modelverse))
    async with (
        running_server(app) as root,
        openai.AsyncOpenAI(api_key="test-step-key", base_url=f"{root}/stepfun/v1", max_retries=0) as step,
        openai.AsyncOpenAI(api_key="test-mv-key", base_url=f"{root}/modelverse/v1", max_retries=0) as mv,
        httpx.AsyncClient(base_url=root, trust_env=False) as http,
    ):
        yield Providers(stepfun, modelverse, step, mv, http)


# StepFun: images.edit (multipart), as https://platform.stepfun.ai/docs/en/api-reference/images/edits shows.


@pytest.mark.parametrize("form", ["single", "list"])
async def test_stepfun_edit_with_one_image(providers: Providers, form: str) -> None:
    """images.edit with `image=file` or the list form `image=[file]` (sent as `image[]`) edits that image."""
    image: Any = png_file(40, 30) if form == "single" else [png_file(40, 30)]
    response = await providers.stepfun.images.edit(
        model=STEPFUN_MODEL,
        image=image,
        prompt="make it red",
        response_format="b64_json",
        extra_body={"seed": 7, "steps": 8, "cfg_scale": 1.0, "text_mode": False},
    )
    (item,) = response.data
    assert item.b64_json is not None
    assert image_size(base64.b64decode(item.b64_json)) == (40, 30)
    assert (item.model_extra or {})["seed"] == 7
    assert (item.model_extra or {})["finish_reason"] == "success"
    assert response._request_id is not None
    assert providers.stepfun_emu.received[-1]["steps"] == "8"


async def test_stepfun_edit_answers_a_url(providers: Providers) -> None:
    """The default response_format gives a URL the emulator serves."""
    response = await providers.stepfun.images.edit(model=STEPFUN_MODEL, image=png_file(), prompt="flip it")
    (item,) = response.data
    assert item.url is not None
    assert await served_image_size(providers.http, item.url) == (32, 24)


async def test_stepfun_list_form_with_two_images_is_refused(providers: Providers) -> None:
    """StepFun takes one image: the list form with two answers 400 naming `image`."""
    with pytest.raises(openai.BadRequestError, match="only one image is supported"):
        await providers.stepfun.images.edit(model=STEPFUN_MODEL, image=[png_file(), png_file()], prompt="x")


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [({"fail_statuses": [429]}, openai.RateLimitError), ({"api_key": "other-key"}, openai.AuthenticationError)],
    ids=["rate-limited", "wrong-key"],
)
async def test_stepfun_errors_carry_a_request_id(
    providers: Providers, fault: dict[str, Any], error_class: type[openai.APIStatusError]
) -> None:
    """Error answers carry X-Request-Id, which the SDK exposes as `request_id`, with the error envelope."""
    providers.stepfun_emu.config = StepFunEmulatorConfig(latency_s=0.0, **fault)
    with pytest.raises(error_class) as caught:
        await providers.stepfun.images.edit(model=STEPFUN_MODEL, image=png_file(), prompt="make it red")
    assert caught.value.request_id
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"]


async def test_stepfun_bad_field_is_a_bad_request_with_a_request_id(providers: Providers) -> None:
    """An out-of-range field answers 400 naming it, with a request id."""
    with pytest.raises(openai.BadRequestError, match="steps") as caught:
        await providers.stepfun.images.edit(
            model=STEPFUN_MODEL, image=png_file(), prompt="make it red", extra_body={"steps": 51}
        )
    assert caught.value.request_id


# Modelverse: images.generate with the image in extra_body, as its step1x-edit page shows.


@pytest.mark.parametrize(
    "image",
    [
        "data:image/png;base64," + base64.b64encode(png_bytes(40, 30)).decode(),
        base64.b64encode(png_bytes(40, 30)).decode(),
    ],
    ids=["data-uri", "bare-base64"],
)
async def test_modelverse_generate_edits_the_image(providers: Providers, image: str) -> None:
    """images.generate(extra_body={"image": ...}) edits a data-URI or bare-base64 image and answers a URL."""
    response = await providers.modelverse.images.generate(
        model=MODELVERSE_MODEL,
        prompt="Convert to quick pencil sketch",
        extra_body={"image": image, "negative_prompt": "blurry, low quality"},
    )
    (item,) = response.data or []
    assert item.url is not None
    assert await served_image_size(providers.http, item.url) == (40, 30)
    assert response._request_id is not None


async def test_modelverse_b64_json_keeps_the_data_prefix(providers: Providers) -> None:
    """response_format=b64_json with n=2 answers two `data:image/png;base64,` strings."""
    response = await providers.modelverse.images.generate(
        model=MODELVERSE_MODEL,
        prompt="make it blue",
        n=2,
        response_format="b64_json",
        extra_body={"image": "data:image/png;base64," + base64.b64encode(png_bytes()).decode()},
    )
    assert len(response.data or []) == 2
    for item in response.data or []:
        prefix, _, payload = (item.b64_json or "").partition(",")
        assert prefix == "data:image/png;base64"
        assert image_size(base64.b64decode(payload)) == (32, 24)


async def test_modelverse_error_names_the_field_and_the_request(providers: Providers) -> None:
    """An unknown model is a BadRequestError; the body's `param` is the request id the header carries."""
    with pytest.raises(openai.BadRequestError) as caught:
        await providers.modelverse.images.generate(
            model="someone/else", prompt="x", extra_body={"image": base64.b64encode(png_bytes()).decode()}
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.code == "model_error"
    assert caught.value.body["param"] == caught.value.request_id


# Over TLS: `receiver emulate --tls` and the certificate it prints, trusted the README's way (SSL_CERT_FILE).


async def test_the_sdk_reaches_the_emulators_over_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With SSL_CERT_FILE set to the certificate `receiver emulate --tls` printed, the SDK edits through StepFun
    and Modelverse over https; without it, the SDK refuses the emulators' certificate."""
    async with emulate_tls(tmp_path) as emulate:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        async with openai.AsyncOpenAI(api_key="k", base_url=f"{emulate.root}/stepfun/v1", max_retries=0) as untrusted:
            with pytest.raises(openai.APIConnectionError) as refused:
                await untrusted.images.edit(model=STEPFUN_MODEL, image=png_file(), prompt="make it red")
        assert "CERTIFICATE_VERIFY_FAILED" in repr(refused.value.__cause__)

        monkeypatch.setenv("SSL_CERT_FILE", str(emulate.certfile))  # read when a client is made, as in a shell
        async with (
            openai.AsyncOpenAI(api_key="k", base_url=f"{emulate.root}/stepfun/v1", max_retries=0) as step,
            openai.AsyncOpenAI(api_key="k", base_url=f"{emulate.root}/modelverse/v1", max_retries=0) as mv,
        ):
            edited = await step.images.edit(
                model=STEPFUN_MODEL, image=png_file(40, 30), prompt="make it red", response_format="b64_json"
            )
            made = await mv.images.generate(
                model=MODELVERSE_MODEL,
                prompt="make it blue",
                extra_body={"image": "data:image/png;base64," + base64.b64encode(png_bytes(40, 30)).decode()},
            )
    (item,) = edited.data or []
    assert image_size(base64.b64decode(item.b64_json or "")) == (40, 30)
    (made_item,) = made.data or []
    assert (made_item.url or "").startswith(f"{emulate.root}/modelverse/")
