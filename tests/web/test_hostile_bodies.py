"""Huge authenticated JSON bodies against a real `receiver serve` process, beside a `/healthz` probe.

25 MB bodies and the worst shapes that fit under the JSON limit, several at once, are refused or taken as
they should be while the probe keeps being answered; the big inputs are checked and decoded off the event
loop. How long the probe waited, the longest GIL stall and the server's peak RSS under the same bodies are
benchmark figures (`scripts/bench --bodies`, docs/benchmarks.md), not bounds asserted here.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import httpx

from bench.big_bodies import BIG, api_mix, chunked, data_uri_images, data_uri_jobs, filler, noise_png_data_uri
from receiver.results import decode_data_uri
from receiver.support import jsontext
from receiver.validation import is_base64_text
from receiver.web.http import INLINE_PARSE_BYTES
from tests.helpers.probes import (
    TOKEN,
    assert_answered_throughout,
    big_calls_on_this_thread,
    hostile_env,
    probed_server,
)
from tests.helpers.stack import StackFactory


async def test_huge_bodies_are_refused_or_taken_while_healthz_keeps_answering(tmp_path: Path, port: int) -> None:
    """25 MB bodies (413) and the worst shapes just under the 16 MiB JSON limit (a 16 MB array of empty
    arrays or objects, a 16 MB prompt, a 12 MB data-URI image) sent several at once to `receiver serve`
    are refused or taken, and /healthz answers every probe, some while the bodies are being handled."""
    async with probed_server(hostile_env(tmp_path, port), port, tmp_path) as served:
        bodies = api_mix()
        await served.start_probe()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=served.server.url, headers=headers, timeout=120) as client:
            began = time.monotonic()
            for _ in range(2):  # twice over, every body at once
                answers = await asyncio.gather(*(client.post("/v1/jobs", content=body) for body, _ in bodies))
                got = [answer.status_code for answer in answers]
                assert got == [status for _, status in bodies], [answer.text[:200] for answer in answers]
            streamed = await client.post("/v1/jobs", content=chunked(filler(BIG, b"[]")))
            assert streamed.status_code == 413, streamed.text[:200]
            ended = time.monotonic()
            listing = await client.get("/v1/jobs")
            assert listing.status_code == 200 and len(listing.json()["jobs"]) == 2
        probed = await served.finish()
    assert_answered_throughout(probed, began, ended, served.server.log_path)


async def test_accepted_data_uri_jobs_and_their_listing_while_healthz_keeps_answering(
    tmp_path: Path, port: int
) -> None:
    """Four ~15 MB data-URI jobs (two fal, whose input keeps the image; two WaveSpeed, whose image we
    decode and serve) created at once, then listed: every one is taken (202), the listing shows each
    data URI as a short descriptor while the job's own page keeps it whole, and /healthz answers every
    probe, some while the jobs are being created and listed."""
    async with probed_server(hostile_env(tmp_path, port), port, tmp_path) as served:
        images = data_uri_images()
        bodies = data_uri_jobs(images)
        await served.start_probe()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=served.server.url, headers=headers, timeout=120) as client:
            began = time.monotonic()
            answers = await asyncio.gather(*(client.post("/v1/jobs", content=body) for body in bodies))
            assert [answer.status_code for answer in answers] == [202] * 4, [a.text[:200] for a in answers]
            listing = await client.get("/v1/jobs")
            ended = time.monotonic()
            assert listing.status_code == 200 and len(listing.content) < 64 * 1024, len(listing.content)
            listed = {item["id"]: item["input"] for item in listing.json()["jobs"]}
            fal_id = answers[0].json()["id"]
            descriptor = listed[fal_id]["image_url"]
            assert descriptor == f"data:image/png;base64,… ({len(images[0])} bytes)", descriptor[:200]
            assert (await client.get(f"/v1/jobs/{fal_id}")).json()["input"]["image_url"] == images[0]
        probed = await served.finish()
    assert_answered_throughout(probed, began, ended, served.server.log_path)


async def test_data_uri_jobs_are_checked_and_decoded_off_the_event_loop(make_stack: StackFactory) -> None:
    """Four accepted ~15 MB data-URI jobs created at once (two fal, two WaveSpeed whose image we decode and
    serve): parsing the bodies, checking the data URIs and decoding the images never run on the event loop's
    thread (they run on worker threads, a slice at a time), and the stored image is the one sent."""
    stack = await make_stack(workers=False)
    images = data_uri_images()
    bodies = data_uri_jobs(images)
    headers = {"Content-Type": "application/json"}
    watched = [jsontext.loads, is_base64_text, decode_data_uri]
    with big_calls_on_this_thread(watched, INLINE_PARSE_BYTES) as on_the_loop:
        answers = await asyncio.gather(
            *(stack.client.post("/v1/jobs", content=body, headers=headers, timeout=60) for body in bodies)
        )
    assert [answer.status_code for answer in answers] == [202] * 4, [a.text[:200] for a in answers]
    assert on_the_loop == [], on_the_loop
    served = await stack.client.get(answers[1].json()["input"]["image"])
    assert served.content == base64.b64decode(images[1].split(",", 1)[1])


async def test_a_fal_job_with_a_big_data_uri_is_submitted_whole(make_stack: StackFactory) -> None:
    """A fal input holding a data URI past the slice size (encoded on a worker thread for the submit)
    reaches fal byte for byte as JSON, and the job succeeds."""
    stack = await make_stack()
    image = noise_png_data_uri(600)  # 1.4 MB as base64
    job_id = (await stack.create("fal", "fal-ai/stepx-edit2", {"prompt": "red", "image_url": image}))["id"]
    assert (await stack.wait_final(job_id, timeout_s=30))["status"] == "succeeded"
    [request] = stack.emulator.requests.values()
    assert request.plan.image_url == image
