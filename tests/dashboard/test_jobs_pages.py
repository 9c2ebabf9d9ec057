"""The dashboard's jobs list, job page, live feed and job actions, over real HTTP with real jobs driven through
the emulators; the list's queries on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import html
import io
import json
import re
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from receiver.dashboard.job_filters import time_value
from tests.helpers.clock import Clock
from tests.helpers.dashboard import browser, csrf_of, log_in, post_form
from tests.helpers.http import assert_error_shape
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.receivers import HookReceiver
from tests.helpers.stack import ON_BOTH_BACKENDS, ClockedStack, Stack, StackFactory, subscribe
from tests.helpers.streams import read_until
from tests.helpers.waiting import until

TOKEN = "dashboard-token-for-tests"
STEPX = "fal-ai/stepx-edit2"
SDXL = "fal-ai/fast-sdxl/image-to-image"
SCRIPT = "<script>alert(1)</script>"
ROW = re.compile(r'<tr data-job-id="(job_[0-9A-Z]{26})" data-status="([a-z]+)"')
FAST = {"notify_retry_scale": 0.0001}


def listed(page: httpx.Response) -> list[tuple[str, str]]:
    """(job id, status) of every row of the jobs table, in order."""
    assert page.status_code == 200, page.text[:1000]
    assert '<table id="jobs"' in page.text
    return ROW.findall(page.text)


def ids(page: httpx.Response) -> list[str]:
    return [job_id for job_id, _ in listed(page)]


def job_body(model: str = STEPX, *, metadata: dict[str, Any] | None = None, **input_fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "provider": "fal",
        "model": model,
        "input": {"prompt": "make it red", "image_url": SMALL_PNG_URI, **input_fields},
    }
    if metadata is not None:
        body["metadata"] = metadata
    return body


async def create(stack: Stack, body: dict[str, Any]) -> str:
    response = await stack.client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def image_format(data: bytes) -> str:
    """The format Pillow reads the bytes as (they decode: real image bytes)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return str(image.format)


@pytest.fixture
async def token_stack(make_stack: StackFactory) -> Stack:
    """A stack with the API token set (the stack's own client sends it)."""
    stack = await make_stack(api_token=SecretStr(TOKEN), **FAST)
    stack.client.headers["Authorization"] = f"Bearer {TOKEN}"
    return stack


async def test_finished_jobs_are_listed_with_their_images(token_stack: Stack) -> None:
    """Jobs driven through the emulator are listed newest first with status, provider, model, prompt and
    thumbnails of their stored input and output, which serve real image bytes."""
    stack = token_stack
    first = await create(stack, job_body(prompt="first one"))
    second = await create(stack, job_body(SDXL, prompt="second one"))
    for job_id in (first, second):
        await stack.wait_for(job_id, lambda job: job["images_status"] == "stored")
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        page = await client.get("/")
        assert listed(page) == [(second, "succeeded"), (first, "succeeded")]
        row = page.text[page.text.index(f'data-job-id="{second}"') :].split("</tr>", 1)[0]
        assert '<td class="prompt">second one' in row and SDXL in row and ">fal<" in row
        thumbnails = re.findall(r'src="(/v1/images/[0-9a-f]{64}\?thumbnail=1)"', row)
        assert len(thumbnails) == 2  # input and output
        for url in thumbnails:
            image = await client.get(html.unescape(url))
            assert image.status_code == 200 and image.headers["content-type"] == "image/webp"
            assert image_format(image.content) == "WEBP"
        full = re.findall(r'href="(/v1/images/[0-9a-f]{64})"', row)
        assert [image_format((await client.get(url)).content) for url in full] == ["PNG", "JPEG"]


@ON_BOTH_BACKENDS
async def test_filters_search_and_paging(make_stack: StackFactory) -> None:
    """Status, provider, model and time filters, search by id, request id or metadata, and page links that
    keep the filters; on both backends."""
    clock = Clock()
    stack = await make_stack(workers=False, clock=clock)
    assert isinstance(stack, ClockedStack)
    old = await create(stack, job_body(metadata={"user": "u_old", "team": "50%_off"}))
    clock.advance(3600)
    cut = clock.now
    sdxl = await create(stack, job_body(SDXL, metadata={"user": "U_Ada"}))
    clock.advance(1)
    cancelled = await create(stack, job_body(metadata={"user": "u_bob"}))
    assert (await stack.client.post(f"/v1/jobs/{cancelled}/cancel")).status_code == 202
    clock.advance(1)
    wavespeed = await stack.create("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "x", "image": SMALL_PNG_URI})
    newest = wavespeed["id"]
    everything = [newest, cancelled, sdxl, old]
    async with browser(stack.url) as client:
        assert ids(await client.get("/")) == everything
        assert ids(await client.get("/", params={"status": "cancelled"})) == [cancelled]
        assert ids(await client.get("/", params={"status": "pending", "provider": "fal"})) == [sdxl, old]
        assert ids(await client.get("/", params={"provider": "wavespeed"})) == [newest]
        assert ids(await client.get("/", params={"model": SDXL})) == [sdxl]
        assert ids(await client.get("/", params={"since": time_value(cut)})) == [newest, cancelled, sdxl]
        assert ids(await client.get("/", params={"until": time_value(cut)})) == [old]
        assert ids(await client.get("/", params={"q": sdxl})) == [sdxl]
        assert ids(await client.get("/", params={"q": "u_ada"})) == [sdxl]  # metadata, any case
        assert ids(await client.get("/", params={"q": "user"})) == [cancelled, sdxl, old]
        assert ids(await client.get("/", params={"q": "50%_"})) == [old]  # % and _ are literal
        assert ids(await client.get("/", params={"q": "%"})) == [old]
        assert ids(await client.get("/", params={"q": "nobody"})) == []
        # Pages of two: the "Older" link carries the cursor and the filters, "Newest" goes back.
        first = await client.get("/", params={"limit": "2", "provider": "fal"})
        assert ids(first) == [cancelled, sdxl]
        older = html.unescape(re.findall(r'<a href="([^"]+)" rel="next">Older</a>', first.text)[0])
        assert "provider=fal" in older and "limit=2" in older and f"cursor={sdxl}" in older
        second = await client.get(older)
        assert ids(second) == [old]
        assert 'rel="next"' not in second.text
        newest_link = html.unescape(re.findall(r'<a href="([^"]+)">Newest</a>', second.text)[0])
        assert ids(await client.get(newest_link)) == [cancelled, sdxl]


async def test_bad_filter_values_are_named_and_left_out(make_stack: StackFactory) -> None:
    """A filter value that cannot be used is named on the page and ignored, never a 500 or a JSON error."""
    stack = await make_stack(workers=False)
    job_id = await create(stack, job_body())
    async with browser(stack.url) as client:
        bad = {"status": "nope", "provider": "acme", "since": "yesterday", "cursor": "x", "limit": "0", "q": "q" * 300}
        page = await client.get("/", params=bad)
        assert ids(page) == [job_id]
        for name in ("status", "provider", "since", "cursor", "limit", "q"):
            assert f"Left out {name}:" in page.text


async def test_provider_text_is_escaped(token_stack: Stack) -> None:
    """A prompt, metadata and provider payload holding HTML are shown as text on the list and the job page."""
    stack = token_stack
    evil_meta = {"note": '<img src=x onerror="alert(2)">', "</td><script>": "x"}
    job_id = await create(stack, job_body(prompt=SCRIPT, metadata=evil_meta))
    await stack.wait_final(job_id)
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        for path in ["/", f"/jobs/{job_id}"]:
            page = await client.get(path)
            assert page.status_code == 200
            assert SCRIPT not in page.text and "<img src=x" not in page.text and "</td><script>" not in page.text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
            assert "&lt;img src=x onerror=" in page.text
            assert page.text.count("<script") == 1  # the dashboard's own script tag, and nothing else
        page = await client.get(f"/jobs/{job_id}")
        payload = page.text[page.text.index('<details id="raw-payload">') :]
        assert "&lt;script&gt;" in payload  # fal echoes the prompt in its payload: escaped there too


async def test_flash_messages_come_from_a_fixed_list(make_stack: StackFactory) -> None:
    """`?done=` after a form shows one of the dashboard's own messages; any other value shows nothing."""
    stack = await make_stack(workers=False)
    async with browser(stack.url) as client:
        assert "The job was cancelled." in (await client.get("/", params={"done": "cancelled"})).text
        page = await client.get("/", params={"done": "Your session expired: log in at evil.example"})
        assert "evil.example" not in page.text and 'class="flash"' not in page.text


async def test_live_feed_needs_a_session(token_stack: Stack) -> None:
    """`/ui/stream` answers 401 (the API's error shape) without a session, even with the bearer token."""
    async with browser(token_stack.url) as client:
        assert_error_shape(await client.get("/ui/stream"), 401, "unauthorized")
        response = await client.get("/ui/stream", headers={"Authorization": f"Bearer {TOKEN}"})
        assert_error_shape(response, 401, "unauthorized")


async def test_live_feed_refuses_other_sites(make_stack: StackFactory) -> None:
    """Another site's page cannot open the feed, even on an open (token-less) dashboard."""
    stack = await make_stack(workers=False)
    async with browser(stack.url) as client:
        for headers in [{"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}]:
            assert_error_shape(await client.get("/ui/stream", headers=headers), 403, "cross_site_request")


@ON_BOTH_BACKENDS
async def test_live_feed_delivers_new_jobs_and_their_changes(token_stack: Stack) -> None:
    """With a session, the feed sends a row for a job created after the page was rendered, then its
    status changes up to succeeded, with the stored images' URLs."""
    stack = token_stack
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        page = await client.get("/")
        since = re.findall(r'data-since="([0-9.]+)"', page.text)[0]
        async with client.stream("GET", "/ui/stream", params={"since": since}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            job_id = await create(stack, job_body(prompt=SCRIPT, metadata={"user": "u_1"}))
            seen = await read_until(lines, f'"id":"{job_id}"')
            assert seen[-2] == "event: job"
            first = json.loads(seen[-1].removeprefix("data: "))
            assert first["prompt"] == SCRIPT and first["metadata"] == 'user="u_1"'
            assert first["href"] == f"/jobs/{job_id}" and first["provider"] == "fal" and first["model"] == STEPX
            assert first["created_at"] > float(since) - 5
            item = first
            async with asyncio.timeout(15):  # bounds a hang only
                while not (item["status"] == "succeeded" and item["output_thumbnail"]):
                    seen = await read_until(lines, f'"id":"{job_id}"')
                    item = json.loads(seen[-1].removeprefix("data: "))
            assert item["input_thumbnail"].startswith("/v1/images/")
            assert item["duration_s"] is not None and item["completed_at"] >= item["created_at"]


@ON_BOTH_BACKENDS
async def test_job_page_shows_images_timeline_and_payload(token_stack: Stack, hook: HookReceiver) -> None:
    """The job page shows input and output (links to full size serving real image bytes), the timeline from
    creation to the delivery attempt with its status code, and the raw payload folded away."""
    stack = token_stack
    sub = await subscribe(stack, {"kind": "webhook", "url": hook.url})
    job_id = await create(stack, job_body())
    await until(lambda: len(hook.hooks) == 1, what="the job.succeeded delivery")
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)

        async def delivered() -> bool:
            return "HTTP 200" in (await client.get(f"/jobs/{job_id}")).text

        await until(delivered, what="the delivery attempt on the timeline")
        page = await client.get(f"/jobs/{job_id}")
        text = page.text
        for image_id in ("input-image", "output-image"):
            tag = re.findall(rf'<a href="([^"]+)"><img id="{image_id}" src="([^"]+)"', text)
            assert len(tag) == 1, image_id
            link, src = tag[0]
            assert link == src and src.startswith("/v1/images/")
            image = await client.get(src)
            assert image.status_code == 200
            assert image_format(image.content) == ("PNG" if image_id == "input-image" else "JPEG")
        timeline = text[text.index('<section id="timeline"') : text.index("</section>")]
        steps = re.findall(r"<strong>([^<]+)</strong>", timeline)
        assert steps[0] == "Created" and "Submitted to fal" in steps  # a webhook may beat the submit's answer
        assert steps.index("Webhook received and verified") + 1 == steps.index("Finished: succeeded")
        for step in ["Input image stored", "Output image 1 stored", "Event job.succeeded emitted"]:
            assert step in steps
        assert f"Delivery to {sub['id']}" in steps
        assert "HTTP 200" in timeline and " ms" in timeline
        assert hook.url not in text  # targets are named by id
        payload = text[text.index('<details id="raw-payload">') :]
        assert "<summary>" in payload and "request_id" in payload
        assert 'action="/jobs/' + job_id + '/resend"' in text and "/cancel" not in text


async def test_unknown_job_page_is_a_404_page(make_stack: StackFactory) -> None:
    """A job id that does not exist answers a 404 page."""
    stack = await make_stack(workers=False)
    async with browser(stack.url) as client:
        page = await client.get("/jobs/job_NOPE")
        assert page.status_code == 404 and "There is no job job_NOPE" in page.text
        csrf = csrf_of(await client.get(f"/jobs/{await create(stack, job_body())}"))
        assert (await post_form(client, "/jobs/job_NOPE/cancel", csrf=csrf)).status_code == 404
        assert (await post_form(client, "/jobs/job_NOPE/resend", csrf=csrf)).status_code == 404


async def test_cancel_needs_the_csrf_token(make_stack: StackFactory) -> None:
    """Cancel from the job page: refused (403, nothing changes) without the CSRF token or with another's;
    with it, the job is cancelled and the page says so; a second cancel is a 409 page."""
    stack = await make_stack(workers=False, api_token=SecretStr(TOKEN))
    stack.client.headers["Authorization"] = f"Bearer {TOKEN}"
    job_id = await create(stack, job_body())
    async with browser(stack.url) as client, browser(stack.url) as other:
        await log_in(client, TOKEN)
        await log_in(other, TOKEN)
        page = await client.get(f"/jobs/{job_id}")
        assert f'action="/jobs/{job_id}/cancel"' in page.text
        csrf = csrf_of(page)
        assert (await post_form(client, f"/jobs/{job_id}/cancel", csrf=None)).status_code == 403
        assert (await post_form(other, f"/jobs/{job_id}/cancel", csrf=csrf)).status_code == 403
        assert (await stack.job(job_id))["status"] == "pending"
        done = await post_form(client, f"/jobs/{job_id}/cancel", csrf=csrf)
        assert done.status_code == 303 and done.headers["location"] == f"/jobs/{job_id}?done=cancelled"
        assert (await stack.job(job_id))["status"] == "cancelled"
        shown = await client.get(done.headers["location"])
        assert "The job was cancelled." in shown.text
        assert 'status-cancelled" id="job-status">cancelled' in shown.text
        again = await post_form(client, f"/jobs/{job_id}/cancel", csrf=csrf)
        assert again.status_code == 409 and "already cancelled" in again.text


async def test_resend_requeues_the_final_event_with_the_same_webhook_id(
    make_stack: StackFactory, hook: HookReceiver
) -> None:
    """Resend (with the CSRF token) sends the job's final event again to its subscriber, with the same
    webhook-id; without the token it is refused and nothing is sent. On an open (token-less) dashboard."""
    stack = await make_stack(**FAST)
    await subscribe(stack, {"kind": "webhook", "url": hook.url})
    job_id = await create(stack, job_body())
    await until(lambda: len(hook.hooks) == 1, what="the first delivery")

    async def settled() -> bool:
        response = await stack.client.get("/v1/deliveries", params={"job_id": job_id})
        return bool(response.json()["deliveries"][0]["status"] == "delivered")

    await until(settled, what="the delivery marked delivered")
    async with browser(stack.url) as client:
        page = await client.get(f"/jobs/{job_id}")
        csrf = csrf_of(page)
        refused = await post_form(client, f"/jobs/{job_id}/resend", csrf="f" * 64)
        assert refused.status_code == 403
        done = await post_form(client, f"/jobs/{job_id}/resend", csrf=csrf)
        assert done.status_code == 303 and done.headers["location"] == f"/jobs/{job_id}?done=resent"
        await until(lambda: len(hook.hooks) == 2, what="the resent delivery")
        first, second = hook.hooks
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.json["type"] == second.json["type"] == "job.succeeded"
        assert len(hook.hooks) == 2  # the refused form sent nothing


async def test_resend_without_deliveries_says_so(make_stack: StackFactory) -> None:
    """Resend for a job with no notification to send again changes nothing and says so."""
    stack = await make_stack(workers=False)
    job_id = await create(stack, job_body())
    async with browser(stack.url) as client:
        csrf = csrf_of(await client.get(f"/jobs/{job_id}"))
        done = await post_form(client, f"/jobs/{job_id}/resend", csrf=csrf)
        assert done.headers["location"] == f"/jobs/{job_id}?done=nothing_to_resend"
