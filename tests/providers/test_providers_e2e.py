"""Every provider through the real path: POST /v1/jobs -> task -> emulator -> webhook / poll / sync answer."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest

from receiver.emulators import StepFunEmulatorConfig, WaveSpeedEmulatorConfig
from receiver.emulators.modelverse import ModelverseEmulatorConfig
from receiver.emulators.wavespeed.delivery import webhook_body
from receiver.ingest.signatures import sign_wavespeed
from tests.helpers.database import read_rows
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.provider_webhooks import webhook_path
from tests.helpers.stack import Stack, StackFactory

FAST_WS = {"queue_s": 0.01, "inference_s": 0.02, "time_scale": 0.001}
MODELS = [
    pytest.param("fal", "fal-ai/stepx-edit2", {"image_url": SMALL_PNG_URI}, id="fal-stepx-edit2"),
    pytest.param("fal", "fal-ai/fast-sdxl/image-to-image", {"image_url": SMALL_PNG_URI}, id="fal-fast-sdxl"),
    pytest.param("wavespeed", "wavespeed-ai/step1x-edit", {"image": SMALL_PNG_URI}, id="wavespeed"),
    pytest.param("stepfun", "step-image-edit-2", {"image": SMALL_PNG_URI}, id="stepfun"),
    pytest.param("modelverse", "stepfun-ai/step1x-edit", {"image": SMALL_PNG_URI}, id="modelverse"),
]


def emulators(stack: Stack) -> Any:
    assert stack.emulators is not None
    return stack.emulators


@pytest.mark.parametrize(("provider", "model", "image"), MODELS)
async def test_every_model_succeeds_with_normalized_images(
    make_stack: StackFactory, provider: str, model: str, image: dict[str, str]
) -> None:
    """The same POST /v1/jobs works for all five models; each ends succeeded in the normalized shape."""
    stack = await make_stack()
    job = await stack.create(provider, model, {"prompt": "make it red", **image})
    final = await stack.wait_final(job["id"])
    assert final["status"] == "succeeded", final["error"]
    result = final["result"]
    assert set(result) == {"images", "seed", "nsfw", "timings"}
    assert result["images"], result
    async with httpx.AsyncClient() as http:
        for entry in result["images"]:
            assert set(entry) == {"url", "inline", "content_type", "width", "height"}
            if entry["url"] is None:  # inline: the facts are read from the bytes
                assert entry["inline"]["bytes"] > 0
                assert entry["width"] and entry["height"] and entry["content_type"]
            else:
                assert (await http.get(entry["url"])).status_code == 200
    assert final["provider_result"] is not None


async def test_wavespeed_fetches_an_inline_input_from_us(make_stack: StackFactory) -> None:
    """A data-URI input for WaveSpeed (which wants a URL) is served by us at an unguessable URL."""
    stack = await make_stack()
    job = await stack.create("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "flip", "image": SMALL_PNG_URI})
    served = job["input"]["image"]
    assert served.startswith(f"{stack.url}/inputs/") and len(served.rsplit("/", 1)[1]) >= 40
    assert (await stack.wait_final(job["id"]))["status"] == "succeeded"
    async with httpx.AsyncClient() as http:
        response = await http.get(served)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert (await http.get(f"{stack.url}/inputs/guess")).status_code == 404


async def wavespeed_job(stack: Stack) -> tuple[dict[str, Any], str]:
    """A WaveSpeed job submitted (emulator told not to deliver); returns the job and its prediction id."""
    emulators(stack).wavespeed.config.no_delivery = True
    job = await stack.create("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI})
    assert await stack.services.runner.run_once() == 1
    job = await stack.job(job["id"])
    assert job["status"] == "submitted"
    return job, job["provider_request_id"]


def ws_body(prediction_id: str, **extra: Any) -> bytes:
    data = {"id": prediction_id, "model": "wavespeed-ai/step1x-edit", "status": "completed"}
    data.update({"outputs": ["https://d1q70pf5vjeyhc.cloudfront.net/x/1.jpeg"], "timings": {"inference": 1500}})
    data.update(extra)
    return json.dumps(data, separators=(",", ":")).encode()


def ws_path(job_id: str, token_stack: Stack) -> str:
    return webhook_path("wavespeed", job_id)


async def test_wavespeed_webhook_accepted_with_the_fetched_secret(make_stack: StackFactory) -> None:
    """A webhook signed with the secret from WaveSpeed's secret endpoint finalizes the job, once."""
    stack = await make_stack(workers=False)
    job, prediction_id = await wavespeed_job(stack)
    secret = emulators(stack).wavespeed.config.webhook_secret
    body = ws_body(prediction_id)
    headers = sign_wavespeed(secret, webhook_id=uuid.uuid4().hex, timestamp=int(time.time()), body=body)
    response = await stack.client.post(ws_path(job["id"], stack), content=body, headers=headers)
    assert response.status_code == 200 and response.json() == {"status": "applied"}
    final = await stack.job(job["id"])
    assert final["status"] == "succeeded"
    assert final["result"]["timings"] == {"inference_s": 1.5}
    again = await stack.client.post(ws_path(job["id"], stack), content=body, headers=headers)
    assert again.json() == {"status": "duplicate"}


def _wrong_secret(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, sign_wavespeed("whsec_not-the-secret", webhook_id="e1", timestamp=int(time.time()), body=body)


def _stale(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, sign_wavespeed(secret, webhook_id="e1", timestamp=int(time.time()) - 301, body=body)


def _tampered(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    headers = sign_wavespeed(secret, webhook_id="e1", timestamp=int(time.time()), body=body)
    return body.replace(b"completed", b"failed\x20\x20"), headers


def _wrong_version(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    headers = sign_wavespeed(secret, webhook_id="e1", timestamp=int(time.time()), body=body)
    headers["webhook-signature"] = headers["webhook-signature"].replace("v3,", "v1,")
    return body, headers


def _base64_key(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    import base64
    import hashlib
    import hmac

    key = base64.urlsafe_b64decode(secret.removeprefix("whsec_") + "==")  # the Svix way; WaveSpeed does not decode
    ts = str(int(time.time()))
    mac = hmac.new(key, f"e1.{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"webhook-id": "e1", "webhook-timestamp": ts, "webhook-signature": f"v3,{mac}"}


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        pytest.param(_wrong_secret, 401, "invalid_signature", id="wrong-secret"),
        pytest.param(_stale, 401, "stale_timestamp", id="stale"),
        pytest.param(_tampered, 401, "invalid_signature", id="tampered-body"),
        pytest.param(_wrong_version, 401, "bad_signature_encoding", id="wrong-version-prefix"),
        pytest.param(_base64_key, 401, "invalid_signature", id="secret-base64-decoded"),
    ],
)
async def test_wavespeed_bad_webhooks_are_refused(make_stack: StackFactory, make: Any, status: int, code: str) -> None:
    """Wrong secret, stale, tampered or wrongly versioned WaveSpeed webhooks: 4xx, nothing recorded."""
    stack = await make_stack(workers=False)
    job, prediction_id = await wavespeed_job(stack)
    body, headers = make(emulators(stack).wavespeed.config.webhook_secret, ws_body(prediction_id))
    response = await stack.client.post(ws_path(job["id"], stack), content=body, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert await stack.job(job["id"]) == job
    assert await read_rows(stack.services.db.path, "SELECT * FROM inbox") == []


async def test_wavespeed_configured_secret_is_used(make_stack: StackFactory) -> None:
    """With RECEIVER_WAVESPEED_WEBHOOK_SECRET set, webhooks verify against it (no secret fetch)."""
    stack = await make_stack(wavespeed_webhook_secret="whsec_configured")
    emulators(stack).wavespeed.config.webhook_secret = "whsec_configured"
    asked: list[str] = []  # the path of every request the receiver sent out

    async def record(request: httpx.Request) -> None:
        asked.append(request.url.path)

    stack.services.http.event_hooks["request"].append(record)
    job = await stack.create("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI})
    final = await stack.wait_final(job["id"])
    assert final["status"] == "succeeded"
    kinds = [row["kind"] for row in await stack.services.store.list_inbox_for_job(job["id"])]
    assert kinds[0] == "webhook"
    assert "/wavespeed/api/v3/wavespeed-ai/step1x-edit" in asked  # the recorder sees the provider calls
    assert [path for path in asked if "secret" in path] == []


async def test_wavespeed_polling_only(make_stack: StackFactory) -> None:
    """RECEIVER_WAVESPEED_WEBHOOKS=false: no webhook is asked for; polling finalizes the job."""
    stack = await make_stack(wavespeed_webhooks=False, wavespeed_poll_after_s=0.05, wavespeed_poll_interval_s=0.05)
    job = await stack.create("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI})
    final = await stack.wait_final(job["id"])
    assert final["status"] == "succeeded"
    [prediction] = emulators(stack).wavespeed.predictions.values()
    assert prediction.webhook_url is None
    kinds = [row["kind"] for row in await stack.services.store.list_inbox_for_job(job["id"])]
    assert kinds == ["poll"]


async def test_wavespeed_webhook_and_poll_race_finalize_once(make_stack: StackFactory) -> None:
    """Webhook and poll both arrive; both are recorded, the job is finalized once and never changes."""
    # The emulator sends no webhook of its own: the test sends WaveSpeed's webhook once the poll has finalized the
    # job, so the order is the race's losing one every time (no timing window).
    config = WaveSpeedEmulatorConfig(**FAST_WS, no_delivery=True)
    stack = await make_stack(wavespeed_config=config, wavespeed_poll_after_s=0.05, wavespeed_poll_interval_s=0.05)
    job = await stack.create("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI})
    final = await stack.wait_final(job["id"])
    [prediction] = emulators(stack).wavespeed.predictions.values()
    assert prediction.webhook_url is not None
    body = webhook_body(prediction)  # byte for byte what the emulator would send
    secret = emulators(stack).wavespeed.config.webhook_secret
    headers = sign_wavespeed(secret, webhook_id=uuid.uuid4().hex, timestamp=int(time.time()), body=body)
    response = await stack.client.post(prediction.webhook_url.removeprefix(stack.url), content=body, headers=headers)
    assert response.status_code == 200, response.text
    kinds = sorted(row["kind"] for row in await stack.services.store.list_inbox_for_job(job["id"]))
    assert kinds == ["poll", "webhook"]
    after = await stack.job(job["id"])
    settled = ("status", "result", "provider_result", "error", "completed_at", "provider_request_id")
    assert {key: after[key] for key in settled} == {key: final[key] for key in settled}


async def test_wavespeed_5xxx_is_resubmitted(make_stack: StackFactory) -> None:
    """A prediction failing with a 5xxx code is submitted afresh; the second one succeeds."""
    config = WaveSpeedEmulatorConfig(**FAST_WS, task_error_code=5003, task_error_count=1)
    stack = await make_stack(wavespeed_config=config)
    job = await stack.create("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI})
    final = await stack.wait_final(job["id"], timeout_s=20)
    assert final["status"] == "succeeded", final["error"]
    assert len(emulators(stack).wavespeed.predictions) == 2
    assert final["provider_request_id"] != next(iter(emulators(stack).wavespeed.predictions))


async def test_wavespeed_1xxx_fails_the_job(make_stack: StackFactory) -> None:
    """A 1xxx task error fails the job with WaveSpeed's message and code; nothing is resubmitted."""
    stack = await make_stack(wavespeed_config=WaveSpeedEmulatorConfig(**FAST_WS, task_error_code=1402))
    job = await stack.create("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI})
    final = await stack.wait_final(job["id"])
    assert final["status"] == "failed"
    assert final["error"]["code"] == "wavespeed_1402"
    assert "download" in final["error"]["message"].lower()
    assert len(emulators(stack).wavespeed.predictions) == 1


async def test_wavespeed_concurrency_limit_keeps_jobs_pending(make_stack: StackFactory) -> None:
    """With a concurrency of 1, extra jobs wait in pending and WaveSpeed never runs two at once."""
    stack = await make_stack(wavespeed_concurrency=1)
    jobs = [
        await stack.create("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI})
        for _ in range(3)
    ]
    finals = [await stack.wait_final(job["id"], timeout_s=20) for job in jobs]
    assert [job["status"] for job in finals] == ["succeeded"] * 3
    assert emulators(stack).wavespeed.max_seen_concurrency == 1
    dead = await read_rows(stack.services.db.path, "SELECT * FROM tasks WHERE status = 'dead'")
    assert dead == []


async def test_stepfun_errors(make_stack: StackFactory) -> None:
    """StepFun: 429 is retried (Retry-After), 451 fails with StepFun's message, content_filtered fails."""
    stack = await make_stack(stepfun_config=StepFunEmulatorConfig(latency_s=0.01, fail_statuses=[429], retry_after_s=0))
    ok = await stack.create("stepfun", "step-image-edit-2", {"prompt": "red", "image": SMALL_PNG_URI})
    assert (await stack.wait_final(ok["id"], timeout_s=20))["status"] == "succeeded"
    assert emulators(stack).stepfun.calls == 2
    emulators(stack).stepfun.config.fail_statuses = [451]
    blocked = await stack.wait_final(
        (await stack.create("stepfun", "step-image-edit-2", {"prompt": "red", "image": SMALL_PNG_URI}))["id"]
    )
    assert blocked["status"] == "failed"
    assert "moderation" in blocked["error"]["message"]
    emulators(stack).stepfun.config.content_filtered = True
    filtered = await stack.wait_final(
        (await stack.create("stepfun", "step-image-edit-2", {"prompt": "red", "image": SMALL_PNG_URI}))["id"]
    )
    assert (filtered["status"], filtered["error"]["code"]) == ("failed", "content_filtered")


async def test_modelverse_errors(make_stack: StackFactory) -> None:
    """Modelverse: 429 is retried; a 400 content-check refusal fails and keeps the request id."""
    config = ModelverseEmulatorConfig(latency_s=0.01, fail_statuses=[429], retry_after_s=0)
    stack = await make_stack(modelverse_config=config)
    ok = await stack.create("modelverse", "stepfun-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI})
    assert (await stack.wait_final(ok["id"], timeout_s=30))["status"] == "succeeded"
    assert emulators(stack).modelverse.calls == 2
    emulators(stack).modelverse.config.fail_statuses = [400]
    refused = await stack.wait_final(
        (await stack.create("modelverse", "stepfun-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI}))["id"]
    )
    assert refused["status"] == "failed"
    assert refused["error"]["provider_request_id"]


@pytest.mark.parametrize(
    ("provider", "model", "field", "value"),
    [
        pytest.param("stepfun", "step-image-edit-2", "steps", 51, id="stepfun-steps"),
        pytest.param("stepfun", "step-image-edit-2", "prompt", "x" * 513, id="stepfun-prompt-length"),
        pytest.param("modelverse", "stepfun-ai/step1x-edit", "n", 5, id="modelverse-n"),
        pytest.param("wavespeed", "wavespeed-ai/step1x-edit", "guidance_scale", 21, id="wavespeed-guidance"),
        pytest.param("wavespeed", "wavespeed-ai/step1x-edit", "seed", 2_147_483_648, id="wavespeed-seed"),
    ],
)
async def test_bad_input_is_refused_before_any_call(
    make_stack: StackFactory, provider: str, model: str, field: str, value: Any
) -> None:
    """Out-of-range inputs get a 422 naming the field; no job, no provider call."""
    stack = await make_stack(workers=False)
    body = {"provider": provider, "model": model, "input": {"prompt": "red", "image": SMALL_PNG_URI, field: value}}
    response = await stack.client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert f"input.{field}" in response.json()["error"]["message"]
