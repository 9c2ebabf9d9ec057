"""Huge webhook bodies, genuine and forged, against a real `receiver serve` process beside a `/healthz` probe.

A provider may send a 24 MB webhook (fal and WaveSpeed inline images as data URIs), and anyone holding a
leaked webhook URL can send 25 MB bodies that fail verification. Sent together, several at once, the genuine
ones complete their jobs, the forged ones are 401, and the probe keeps being answered. How long it waited and
the server's peak RSS are benchmark figures (`scripts/bench --bodies`, docs/benchmarks.md), not bounds here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.types import Receive, Scope, Send

from bench.big_bodies import (
    FORGED_FAL,
    WAVESPEED_SECRET,
    noise_png_data_uri,
    webhook_rounds,
)
from receiver.emulators import create_emulator_app
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.ingest import bodies as webhook_bodies
from receiver.web.asgi_server import running_server
from receiver.web.routes.webhooks import webhook_gate
from tests.helpers.database import read_rows
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.probes import TOKEN, assert_answered_throughout, hostile_env, probed_server
from tests.helpers.provider_webhooks import signed_fal_webhook, webhook_path
from tests.helpers.stack import Stack, StackFactory
from tests.helpers.waiting import until


async def wavespeed_rate_limited(scope: Scope, receive: Receive, send: Send) -> None:
    """A WaveSpeed stand-in that answers every request 429 with `Retry-After: 3600`: the job's submit is put off
    for a minute per attempt (our backoff's cap), so its webhook finds it waiting however slow the machine is
    (a refused connection retries on full jitter and can spend its eight attempts in seconds)."""
    if scope["type"] != "http":
        return
    body = b'{"code":429,"message":"rate limited","data":null}'
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"3600")]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def webhook_url(base: str, provider: str, job_id: str) -> str:
    return base + webhook_path(provider, job_id)


async def bound_fal_job(client: httpx.AsyncClient) -> dict[str, Any]:
    """A fal job the emulator accepted (it never delivers): its request id is bound."""
    body = {"provider": "fal", "model": "fal-ai/stepx-edit2", "input": {"prompt": "p", "image_url": SMALL_PNG_URI}}
    created = await client.post("/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    deadline = time.monotonic() + 15
    while True:
        job: dict[str, Any] = (await client.get(f"/v1/jobs/{created.json()['id']}")).json()
        if job["provider_request_id"]:
            return job
        assert time.monotonic() < deadline, f"the fal submit never happened: {job}"
        await asyncio.sleep(0.05)


async def send_as_providers_do(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    """POST a webhook and, as every provider does, send it again after its Retry-After while it is answered 503
    `busy`: the large-body gate's one slot was held longer than its wait, which a busy machine makes happen when
    four 25 MB bodies arrive at once. The deadline only bounds a hang."""
    deadline = time.monotonic() + 60
    while True:
        answer = await client.post(url, content=body, headers=headers)
        if answer.status_code != 503 or answer.json()["error"]["code"] != "busy" or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(float(answer.headers["Retry-After"]))


async def wait_succeeded(db_path: Path, job_id: str) -> None:
    """Until the job succeeded and its inline images are stored (the webhook's follow-up work), read from the
    database file: `GET /v1/jobs/{id}` would carry the job's 23 MB provider_result each time."""
    deadline = time.monotonic() + 60
    while True:
        [(status, images)] = await read_rows(db_path, "SELECT status, images_status FROM jobs WHERE id = ?", job_id)
        if status == "succeeded" and images == "stored":
            return
        assert status in ("pending", "submitted", "running", "succeeded"), status
        assert time.monotonic() < deadline, f"job {job_id} never finished: {status} {images}"
        await asyncio.sleep(0.1)


async def test_huge_webhooks_are_taken_or_refused_while_healthz_keeps_answering(tmp_path: Path, port: int) -> None:
    """A 23 MB signed fal webhook, then a 23 MB signed WaveSpeed one (data-URI images), each sent beside three
    25 MB forged ones at once (any answered 503 `busy` sent again, as providers do): the genuine ones complete
    their jobs (images stored), the forged ones are 401, and /healthz answers every probe, some while the
    webhooks are being handled."""
    key = Ed25519PrivateKey.generate()
    emulator = FalEmulator(FalEmulatorConfig(queue_s=0.01, inference_s=0.02, no_delivery=True), signing_key=key)
    async with (
        running_server(create_emulator_app(fal=emulator)) as emulator_url,
        running_server(wavespeed_rate_limited) as wavespeed_url,
    ):
        env = hostile_env(tmp_path, port)
        env.update(
            RECEIVER_FAL_QUEUE_URL=f"{emulator_url}/fal",
            RECEIVER_WAVESPEED_URL=wavespeed_url,
            RECEIVER_FAL_JWKS_URL=f"{emulator_url}/fal/.well-known/jwks.json",
            RECEIVER_WAVESPEED_WEBHOOK_SECRET=WAVESPEED_SECRET,
            RECEIVER_RECONCILE_AFTER_S="3600",
        )
        async with probed_server(env, port, tmp_path) as served:
            server = served.server
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120) as client:
                fal_job = await bound_fal_job(client)
                created = await client.post(
                    "/v1/jobs",
                    json={
                        "provider": "wavespeed",
                        "model": "wavespeed-ai/step1x-edit",
                        "input": {"prompt": "p", "image": SMALL_PNG_URI},
                    },
                )
                assert created.status_code == 202, created.text
                wavespeed_job = created.json()
                images = [noise_png_data_uri(1700), noise_png_data_uri(1700)]  # 11.6 MB of base64 each
                fal = (fal_job, webhook_url(server.url, "fal", fal_job["id"]))
                wavespeed = (wavespeed_job, webhook_url(server.url, "wavespeed", wavespeed_job["id"]))
                await served.start_probe()
                began = time.monotonic()
                # One genuine webhook at a time (with its follow-up), each beside three forged ones.
                for job_id, sent in webhook_rounds(key, images, fal, wavespeed):
                    answers = await asyncio.gather(*(send_as_providers_do(client, u, b, h) for u, b, h in sent))
                    got = [(answer.status_code, answer.json()) for answer in answers]
                    assert got[0] == (200, {"status": "applied"}), got
                    assert [status for status, _ in got[1:]] == [401] * 3, got
                    await wait_succeeded(tmp_path / "receiver.db", job_id)
                ended = time.monotonic()
                probed = await served.finish()
                for job_id in (fal_job["id"], wavespeed_job["id"]):
                    done = (await client.get(f"/v1/jobs/{job_id}")).json()
                    sides = [(image["width"], image["height"]) for image in done["result"]["images"]]
                    assert sides == [(1700, 1700)] * 2, done["result"]
    assert_answered_throughout(probed, began, ended, served.server.log_path)


async def submitted_fal_job(make_stack: StackFactory) -> tuple[Stack, str, str, str]:
    """A fal job submitted to an emulator that never delivers: the stack (workers off), the job id, its request
    id and its webhook URL."""
    stack = await make_stack(workers=False)
    stack.emulator.config.no_delivery = True
    job = await stack.create_job()
    assert await stack.services.runner.run_once() == 1
    request_id = (await stack.job(job["id"]))["provider_request_id"]
    return stack, job["id"], request_id, webhook_url(stack.url, "fal", job["id"])


async def held_body(size: int, release: asyncio.Event) -> AsyncIterator[bytes]:
    """A `size`-byte JSON body whose first 64 KiB arrive at once, the rest once `release` is set."""
    yield b"{" + b" " * (64 * 1024)
    await release.wait()
    yield b" " * (size - 64 * 1024 - 2) + b"}"


async def until_busy(stack: Stack, url: str, size: int, headers: dict[str, str], what: str) -> None:
    """Until a large forged webhook of `size` bytes is answered 503 (every slot is taken)."""
    deadline = time.monotonic() + 10
    while (await stack.client.post(url, content=b" " * size, headers=headers)).status_code != 503:
        assert time.monotonic() < deadline, what


async def test_large_webhooks_wait_for_a_slot_then_get_503_with_retry_after(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While every slot for large webhook bodies is held (bodies still arriving), another large webhook waits,
    then answers 503 `busy` with Retry-After (providers resend it); small webhooks are never held; once the
    slow bodies end, a large genuine webhook goes through."""
    monkeypatch.setattr(webhook_bodies, "GATE_WAIT_S", 0.3)
    stack, job_id, request_id, url = await submitted_fal_job(make_stack)
    forged = {**FORGED_FAL, "X-Fal-Webhook-Timestamp": str(int(time.time()))}
    size = 4 * webhook_bodies.LARGE_BODY_BYTES
    release = asyncio.Event()
    declared = {**forged, "Content-Length": str(size)}
    slow = [
        asyncio.create_task(stack.client.post(url, content=held_body(size, release), headers=declared))
        for _ in range(webhook_bodies.GATE_SLOTS)
    ]
    await until_busy(stack, url, size, forged, "the slow bodies never took the slots")
    small = await stack.client.post(url, content=b"{}", headers=forged)
    assert small.status_code == 401, small.text
    payload = {"images": [], "note": "x" * size}
    body, headers = signed_fal_webhook(stack.signing_key, request_id, payload)
    began = time.monotonic()
    busy = await stack.client.post(url, content=body, headers=headers)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1", busy.text
    assert busy.json()["error"]["code"] == "busy" and time.monotonic() - began >= 0.3
    assert (await stack.job(job_id))["status"] == "submitted"
    release.set()
    assert [answer.status_code for answer in await asyncio.gather(*slow)] == [401] * webhook_bodies.GATE_SLOTS
    again = await stack.client.post(url, content=body, headers=headers)
    assert again.status_code == 200 and again.json() == {"status": "applied"}, again.text
    assert (await stack.job(job_id))["status"] == "succeeded"


async def test_a_large_body_arriving_too_slowly_gives_its_slot_up(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large webhook body still arriving after `READ_S` loses its slot (answered 503 when it ends, or cut
    off): a slow sender cannot hold genuine large webhooks off for longer than that."""
    monkeypatch.setattr(webhook_bodies, "READ_S", 1.0)
    monkeypatch.setattr(webhook_bodies, "GATE_WAIT_S", 0.05)
    stack, _, request_id, url = await submitted_fal_job(make_stack)
    size = 4 * webhook_bodies.LARGE_BODY_BYTES
    forged = {**FORGED_FAL, "X-Fal-Webhook-Timestamp": str(int(time.time()))}
    release = asyncio.Event()
    slow = asyncio.create_task(
        stack.client.post(url, content=held_body(size, release), headers={**forged, "Content-Length": str(size)})
    )
    # Seen in the gate itself: a forged large webhook answered 503 would have to come within READ_S.
    assert stack.app is not None
    gate = webhook_gate(stack.app)
    await until(gate.slots.locked, what="the slow body took the slot")
    monkeypatch.setattr(webhook_bodies, "GATE_WAIT_S", 30.0)  # the genuine one may wait its turn
    body, headers = signed_fal_webhook(stack.signing_key, request_id, {"images": [], "note": "x" * size})
    genuine = await stack.client.post(url, content=body, headers=headers, timeout=60)
    assert genuine.status_code == 200 and genuine.json() == {"status": "applied"}, genuine.text
    assert not slow.done()  # taken while the slow body is still arriving: it did not wait for its end
    release.set()
    try:
        cut = await slow
    except httpx.TransportError:
        return  # the server answered and closed while the body was still being sent
    assert cut.status_code == 503 and cut.json()["error"]["code"] == "busy", cut.text
