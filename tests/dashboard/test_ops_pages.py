"""The dashboard's deliveries and subscriptions pages and its health strip, over real HTTP on loopback, with real
deliveries made dead for real (a target answering 500 until the retry schedule is spent) and retried from the
page; provider error text and subscription URLs escaped."""

from __future__ import annotations

import html
import re
import time
from typing import Any

import httpx
from markupsafe import escape
from pydantic import SecretStr
from starlette.responses import JSONResponse

from receiver.emulators.fal import FalEmulatorConfig
from receiver.notify import verify
from tests.helpers.dashboard import browser, csrf_of, log_in, post_form
from tests.helpers.receivers import HookReceiver
from tests.helpers.stack import FAST as FAST_EMULATOR
from tests.helpers.stack import Stack, StackFactory, subscribe
from tests.helpers.waiting import until

TOKEN = "dashboard-token-for-ops-tests"
SCHEDULE = len((0, 5, 300, 1800, 7200, 18000, 36000, 36000))  # attempts before a delivery is dead
TINY = {"notify_retry_scale": 0.000001}  # the day-long schedule in about 0.1 s (below the setting's floor)
SCRIPT = "<script>alert(1)</script>"
ROW = re.compile(r'<tr data-delivery-id="(dlv_[0-9A-Z]{26})" data-status="([a-z]+)"')


async def token_stack(make_stack: StackFactory, **overrides: Any) -> Stack:
    stack = await make_stack(api_token=SecretStr(TOKEN), unchecked=TINY, **overrides)
    stack.client.headers["Authorization"] = f"Bearer {TOKEN}"
    return stack


def rows(page: httpx.Response) -> list[tuple[str, str]]:
    assert page.status_code == 200, page.text[:1000]
    assert '<table id="deliveries"' in page.text
    return ROW.findall(page.text)


def row_of(page: httpx.Response, marker: str) -> str:
    return page.text[page.text.index(marker) :].split("</tr>", 1)[0]


async def deliveries(stack: Stack, **params: str) -> list[dict[str, Any]]:
    response = await stack.client.get("/v1/deliveries", params=params)
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["deliveries"]
    return listed


async def dead_delivery(stack: Stack, *subscribers: HookReceiver) -> list[dict[str, Any]]:
    """One job whose delivery to each subscriber fails through the whole schedule: dead, for real."""
    subs = []
    for subscriber in subscribers:
        subscriber.answers = [500] * SCHEDULE
        subs.append(await subscribe(stack, {"kind": "webhook", "url": subscriber.url, "events": ["job.succeeded"]}))
    job = await stack.create_job()
    await stack.wait_final(job["id"])

    async def all_dead() -> bool:
        return len(await deliveries(stack, job_id=job["id"], status="dead")) == len(subscribers)

    await until(all_dead, what="every delivery dead")
    return subs


async def test_a_dead_delivery_is_retried_from_the_page_and_delivered(
    make_stack: StackFactory, hook: HookReceiver
) -> None:
    """The page lists the dead delivery with its error and a Retry button; Retry (with the page's CSRF token)
    sends it again with the same webhook-id, it is delivered, and the page no longer lists it."""
    stack = await token_stack(make_stack)
    [sub] = await dead_delivery(stack, hook)
    [dead] = await deliveries(stack, status="dead")
    assert len(hook.hooks) == SCHEDULE
    async with browser(stack.url) as client:
        assert (await client.get("/deliveries")).status_code == 303  # not logged in: to /login
        await log_in(client, TOKEN)
        page = await client.get("/deliveries")
        assert rows(page) == [(dead["id"], "dead")]
        row = row_of(page, f'data-delivery-id="{dead["id"]}"')
        assert f'action="/deliveries/{dead["id"]}/retry"' in row and ">Retry</button>" in row
        assert "HTTP 500" in row and sub["id"] in row and "job.succeeded" in row
        assert '<section id="health"' in page.text
        refused = await post_form(client, f"/deliveries/{dead['id']}/retry", csrf="0" * 64)
        assert refused.status_code == 403
        retried = await post_form(client, f"/deliveries/{dead['id']}/retry", csrf=csrf_of(page))
        assert (retried.status_code, retried.headers["location"]) == (303, "/deliveries?done=retried")

        async def delivered() -> bool:
            return [row["id"] for row in await deliveries(stack, status="delivered")] == [dead["id"]]

        await until(delivered, what="the retried delivery delivered")
        assert len(hook.hooks) == SCHEDULE + 1
        assert hook.hooks[-1].headers["webhook-id"] == dead["webhook_id"]
        verify(sub["secret"], hook.hooks[-1].headers, hook.hooks[-1].body, now=time.time())
        after = await client.get("/deliveries?done=retried")
        assert rows(after) == [] and "The delivery was queued again." in after.text


async def test_bulk_replay_by_selection_then_by_filter(make_stack: StackFactory) -> None:
    """Replaying the ticked deliveries requeues those only; replaying by filter requeues every dead one of the
    subscription filtered on; both are delivered."""
    stack = await token_stack(make_stack)
    async with HookReceiver().running() as first, HookReceiver().running() as second:
        sub_a, sub_b = await dead_delivery(stack, first, second)
        [dead_a] = await deliveries(stack, subscription_id=sub_a["id"])
        [dead_b] = await deliveries(stack, subscription_id=sub_b["id"])
        async with browser(stack.url) as client:
            await log_in(client, TOKEN)
            page = await client.get("/deliveries")
            assert sorted(rows(page)) == sorted([(dead_a["id"], "dead"), (dead_b["id"], "dead")])
            csrf = csrf_of(page)
            assert (await post_form(client, "/deliveries/replay", csrf=csrf, all="0")).status_code == 400
            picked = await post_form(client, "/deliveries/replay", csrf=csrf, all="0", id=[dead_a["id"]])
            assert picked.status_code == 303
            await until(lambda: len(first.hooks) == SCHEDULE + 1, what="the ticked delivery sent again")
            filtered = await client.get(f"/deliveries?subscription={sub_b['id']}")
            assert rows(filtered) == [(dead_b["id"], "dead")]
            by_filter = await post_form(
                client, "/deliveries/replay", csrf=csrf_of(filtered), all="1", subscription=sub_b["id"], status=""
            )
            assert by_filter.status_code == 303
            await until(lambda: len(second.hooks) == SCHEDULE + 1, what="the filtered delivery sent again")

            async def none_left() -> bool:
                return rows(await client.get("/deliveries")) == []

            await until(none_left, what="no failing or dead delivery left")
        assert len(first.hooks) == SCHEDULE + 1  # replayed once, not twice


async def test_error_text_and_urls_are_escaped(make_stack: StackFactory) -> None:
    """A target's error text quoting markup, and a subscription URL holding markup characters, are shown as
    text on both pages (never as markup), and a query token in a URL is not shown at all."""
    stack = await token_stack(make_stack)
    async with HookReceiver().running() as target:
        answer = JSONResponse({"message": SCRIPT}, status_code=500)
        url = f'{target.url}/a"b<i>x?token=tok-secret-1'
        sub = await subscribe(stack, {"kind": "webhook", "url": url, "events": ["job.succeeded"]})
        target.answers = [500] * (SCHEDULE - 1) + [answer]  # the last attempt's error quotes markup
        job = await stack.create_job()
        await stack.wait_final(job["id"])

        async def dead() -> bool:
            return bool(await deliveries(stack, status="dead"))

        await until(dead, what="the delivery dead")
        async with browser(stack.url) as client:
            await log_in(client, TOKEN)
            subscriptions = await client.get("/subscriptions")
            failing = await client.get("/deliveries")
    [delivery] = await deliveries(stack, status="dead")
    assert SCRIPT not in failing.text and SCRIPT not in subscriptions.text
    assert "<i>x" not in failing.text and "<i>x" not in subscriptions.text
    assert "tok-secret-1" not in failing.text and "tok-secret-1" not in subscriptions.text
    assert str(escape('/a"b<i>x')) in row_of(subscriptions, f'data-subscription-id="{sub["id"]}"')
    assert str(escape('/a"b<i>x')) in row_of(failing, f'data-delivery-id="{delivery["id"]}"')
    assert str(escape(SCRIPT)) in row_of(subscriptions, f'data-subscription-id="{sub["id"]}"')  # its last error
    assert str(escape(SCRIPT)) in row_of(failing, f'data-delivery-id="{delivery["id"]}"')


async def test_subscriptions_add_test_rotate_and_remove(make_stack: StackFactory, hook: HookReceiver) -> None:
    """Add shows the signing secret once (not on the next visit); Test sends a signed test message and says how
    the target answered; Rotate shows the new secret once; Remove disables it for good; a bad form comes back
    with the reason and its values, escaped."""
    stack = await token_stack(make_stack)
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        page = await client.get("/subscriptions")
        assert '<table id="subscriptions"' in page.text and '<section id="health"' in page.text
        csrf = csrf_of(page)
        bad = await post_form(client, "/subscriptions", csrf=csrf, kind="webhook", url=f"not a url {SCRIPT}")
        assert bad.status_code == 422 and SCRIPT not in bad.text and html.escape(SCRIPT) in bad.text
        added = await post_form(
            client, "/subscriptions", csrf=csrf, kind="webhook", url=hook.url, events=["job.succeeded", "job.failed"]
        )
        assert added.status_code == 201
        [listed] = (await stack.client.get("/v1/subscriptions")).json()["subscriptions"]
        assert listed["events"] == ["job.succeeded", "job.failed"]
        secret = re.search(r'<div class="card secret-once".*?<code>(whsec_[^<]+)</code></p>', added.text, re.S)
        assert secret is not None
        secret_value = secret.group(1)
        again = await client.get("/subscriptions")
        assert secret_value not in again.text and listed["id"] in again.text

        tested = await post_form(client, f"/subscriptions/{listed['id']}/test", csrf=csrf)
        assert tested.status_code == 200 and 'id="test-result"' in tested.text and "delivered" in tested.text
        assert hook.hooks[-1].json["type"] == "subscription.test"
        verify(secret_value, hook.hooks[-1].headers, hook.hooks[-1].body, now=time.time())

        rotated = await post_form(client, f"/subscriptions/{listed['id']}/rotate", csrf=csrf)
        new = re.search(r"<code>(whsec_[^<]+)</code>", rotated.text)
        assert rotated.status_code == 200 and new is not None and new.group(1) != secret_value
        assert new.group(1) not in (await client.get("/subscriptions")).text
        await post_form(client, f"/subscriptions/{listed['id']}/test", csrf=csrf)
        verify(new.group(1), hook.hooks[-1].headers, hook.hooks[-1].body, now=time.time())

        removed = await post_form(client, f"/subscriptions/{listed['id']}/delete", csrf=csrf)
        assert (removed.status_code, removed.headers["location"]) == (303, "/subscriptions?done=deleted")
        assert (await post_form(client, "/subscriptions/sub_none/delete", csrf=csrf)).status_code == 404
        assert (await post_form(client, f"/subscriptions/{listed['id']}/rotate", csrf=None)).status_code == 403
    [gone] = (await stack.client.get("/v1/subscriptions")).json()["subscriptions"]
    assert (gone["status"], gone["disabled_reason"]) == ("disabled", "deleted")


async def test_the_health_strip_shows_queues_webhooks_providers_and_fal_queue_positions(
    make_stack: StackFactory,
) -> None:
    """After a fal job finished by webhook and another one left waiting in fal's queue: the strip shows the
    webhook accepted for fal, fal's finished jobs, task kinds, and the waiting job with its queue position."""
    stack = await token_stack(make_stack)
    done = await stack.create_job()
    await stack.wait_final(done["id"])
    stack.emulator.config = FalEmulatorConfig(**{**FAST_EMULATOR, "queue_s": 600.0})
    held = await stack.create_job()
    waiting = await stack.create_job()
    await stack.wait_for(waiting["id"], lambda job: job["status"] == "submitted")
    async with browser(stack.url) as client:
        await log_in(client, TOKEN)
        page = await client.get("/deliveries")
    strip = page.text[page.text.index('<section id="health"') :].split("</section>", 1)[0]
    assert '<tr data-provider="fal" data-outcome="accepted"' in strip
    fal = strip[strip.index('id="health-providers"') :]
    assert re.search(r'<tr data-provider="fal">\s*<th scope="row">fal</th>\s*<td>1</td>\s*<td>0</td>', fal)
    assert "<h3>Task queues</h3>" in strip and ('id="health-tasks"' in strip or "No task waiting" in strip)
    queue = strip[strip.index('id="health-queue"') :]
    assert re.search(rf'<tr data-job-id="{waiting["id"]}">.*?<td>1</td>', queue, re.S)
    assert f'data-job-id="{held["id"]}"' in queue
