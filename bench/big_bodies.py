"""The huge bodies `scripts/bench --bodies` sends and the hostile-body tests check (tests/web/test_hostile_bodies.py,
tests/ingest/test_hostile_webhooks.py): oversized and worst-shape API bodies, big data-URI jobs, and big genuine
and forged webhooks. One copy, so the figures are measured on exactly the bodies the tests refuse or take."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from receiver.ingest.signatures import sign_fal, sign_wavespeed

MB = 1024 * 1024
JSON_LIMIT = 16 * MB  # the API's JSON body limit
BIG = 25 * MB  # past every limit
WAVESPEED_SECRET = "whsec_dGVzdC1zZWNyZXQ="  # the WaveSpeed webhook secret the receiver is configured with
FORGED_FAL = {  # well-formed headers, a signature no key made (add X-Fal-Webhook-Timestamp)
    "X-Fal-Webhook-Request-Id": "r",
    "X-Fal-Webhook-User-Id": "u",
    "X-Fal-Webhook-Signature": "00" * 64,
    "Content-Type": "application/json",
}
FORGED_WAVESPEED = {  # add webhook-timestamp
    "webhook-id": "evt",
    "webhook-signature": "v3," + "00" * 32,
    "Content-Type": "application/json",
}
FORGED_BODY = b'{"x":"' + b"A" * (BIG - 8) + b'"}'  # 25 MB a forger may send to a leaked webhook URL


def noise_png_data_uri(side: int) -> str:
    """An incompressible PNG (random pixels, stored, not deflated) of side x side pixels, as a data URI."""
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=0)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def job(provider: str, model: str, input: dict[str, object]) -> bytes:
    """A `POST /v1/jobs` body."""
    return json.dumps({"provider": provider, "model": model, "input": input}).encode()


def filler(size: int, item: bytes) -> bytes:
    """A passed-through WaveSpeed input holding one array of `item`s, `size` bytes in all."""
    head, foot = b'{"provider":"wavespeed","model":"x/y","input":{"a":[', b"]}}"
    count = (size - len(head) - len(foot)) // (len(item) + 1)
    return head + b",".join([item] * count) + foot


async def chunked(data: bytes, size: int = MB) -> AsyncIterator[bytes]:
    """The body streamed without a Content-Length (chunked transfer encoding)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def api_mix() -> list[tuple[bytes, int]]:
    """25 MB bodies (413), the worst shapes just under the JSON limit (a 16 MB array of empty arrays or objects,
    a 16 MB prompt: 422) and a 12 MB data-URI job (202), each with the status it must get."""
    image = noise_png_data_uri(1800)  # 9.7 MB of pixels, 13 MB as base64
    long_prompt = {"prompt": "x" * (JSON_LIMIT - 200), "image_url": "https://a.example/i.png"}
    return [
        (filler(BIG, b"[]"), 413),
        (filler(BIG, b"0"), 413),
        (job("wavespeed", "x/y", {"prompt": "x" * BIG}), 413),
        (filler(JSON_LIMIT - 100, b"[]"), 422),
        (filler(JSON_LIMIT - 100, b"{}"), 422),
        (job("fal", "fal-ai/stepx-edit2", long_prompt), 422),
        (job("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "red", "image": image}), 202),
    ]


def data_uri_images() -> list[str]:
    """Four ~15 MB data-URI images (11.4 MB of pixels, 15.2 MB as base64 each)."""
    return [noise_png_data_uri(1950) for _ in range(4)]


def data_uri_jobs(images: list[str]) -> list[bytes]:
    """A job for each image, fal and WaveSpeed in turn: fal's input keeps the image, WaveSpeed's is decoded and
    stored by us."""
    return [
        job("fal", "fal-ai/stepx-edit2", {"prompt": "red", "image_url": image})
        if index % 2 == 0
        else job("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "red", "image": image})
        for index, image in enumerate(images)
    ]


def signed_fal(key: Ed25519PrivateKey, job: dict[str, Any], images: list[str], url: str) -> tuple[str, bytes, Any]:
    """A fal completion for the bound `job` carrying `images` (data URIs), signed with `key`: (url, body, headers)."""
    request_id = job["provider_request_id"]
    payload = {"images": [{"url": uri, "content_type": "image/png"} for uri in images]}
    body = json.dumps({"request_id": request_id, "status": "OK", "payload": payload}).encode()
    headers = sign_fal(key, request_id=request_id, user_id="emulator-user", timestamp=int(time.time()), body=body)
    return url, body, {**headers, "Content-Type": "application/json"}


def signed_wavespeed(images: list[str], url: str) -> tuple[str, bytes, Any]:
    """A WaveSpeed completion carrying `images` (data URIs), signed with WAVESPEED_SECRET: (url, body, headers)."""
    body = json.dumps({"id": "prediction-big", "status": "completed", "outputs": images}).encode()
    headers = sign_wavespeed(WAVESPEED_SECRET, webhook_id="evt-big", timestamp=int(time.time()), body=body)
    return url, body, {**headers, "Content-Type": "application/json"}


Sent = tuple[str, bytes, Any]  # url, body, headers


def webhook_rounds(
    key: Ed25519PrivateKey, images: list[str], fal: tuple[dict[str, Any], str], wavespeed: tuple[dict[str, Any], str]
) -> list[tuple[str, list[Sent]]]:
    """Two rounds of webhooks for a bound fal job and a WaveSpeed job, each given with its webhook URL: a genuine
    fal completion carrying `images` (signed with `key`), then a genuine WaveSpeed one, each first beside three
    25 MB forged ones (two to fal's URL, one to WaveSpeed's). Each round is its genuine webhook's job id and
    what to send at once."""
    (fal_job, fal_url), (wavespeed_job, wavespeed_url) = fal, wavespeed
    now = str(int(time.time()))
    forged_fal = (fal_url, FORGED_BODY, {**FORGED_FAL, "X-Fal-Webhook-Timestamp": now})
    forged_wavespeed = (wavespeed_url, FORGED_BODY, {**FORGED_WAVESPEED, "webhook-timestamp": now})
    forged = [forged_fal, forged_fal, forged_wavespeed]
    return [
        (fal_job["id"], [signed_fal(key, fal_job, images, fal_url), *forged]),
        (wavespeed_job["id"], [signed_wavespeed(images, wavespeed_url), *forged]),
    ]
