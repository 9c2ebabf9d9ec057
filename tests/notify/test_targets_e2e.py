"""Notification targets over the real API: checked when created (422 naming the field), and a target
that can never succeed is dead after one attempt instead of a day of retries."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from receiver.emulators.chat import ChatEmulator
from receiver.storage import subscriptions
from receiver.web.asgi_server import running_server
from tests.helpers.database import read_rows
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.stack import Stack, StackFactory

FAST = {"notify_retry_scale": 0.0001}
TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
OTHER_TOKEN = "654321:ZYX-DEF1234ghIkl-zyx57W2v1u123ew99"
SLACK_URL = "https://hooks.slack.com/services/T0ABC/B0DEF/abcDEF123"


@pytest.fixture
async def chat() -> AsyncIterator[tuple[ChatEmulator, str]]:
    emulator = ChatEmulator(telegram_token=TOKEN)
    async with running_server(emulator.app) as url:
        yield emulator, url


class Resolutions:
    """A resolver with fixed answers; a name it does not know fails like a DNS outage."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def __call__(self, host: str, port: int) -> list[str]:
        if host not in self.answers:
            raise OSError(f"Temporary failure in name resolution: {host}")
        return self.answers[host]


def assert_422(response: Any, field: str) -> str:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and error["message"].startswith(f"{field}:"), error
    message: str = error["message"]
    return message


async def delivery_of(stack: Stack, job_id: str, *, final: tuple[str, ...] = ("dead",)) -> dict[str, Any]:
    """The job's one delivery once it is in one of `final` (polled with a bounded deadline)."""
    deadline = time.monotonic() + 10
    while True:
        response = await stack.client.get("/v1/deliveries", params={"job_id": job_id})
        rows = response.json()["deliveries"]
        if rows and rows[0]["status"] in final:
            delivery: dict[str, Any] = rows[0]
            return delivery
        assert time.monotonic() < deadline, f"delivery never reached {final}: {rows}"
        await asyncio.sleep(0.02)


BAD_TARGETS = [
    pytest.param({"kind": "webhook", "url": "https://[::1/h"}, "url", "not a valid URL", id="unclosed-ipv6"),
    pytest.param({"kind": "webhook", "url": "https://example.com:99999/h"}, "url", "not a valid URL", id="port-range"),
    pytest.param({"kind": "webhook", "url": "https://example.com:0/h"}, "url", "port 0", id="port-zero"),
    pytest.param({"kind": "webhook", "url": "https://example.com:x/h"}, "url", "not a valid URL", id="port-text"),
    pytest.param({"kind": "webhook", "url": "http://example.com/h"}, "url", "http scheme", id="plain-http"),
    pytest.param({"kind": "webhook", "url": "https://u:p@example.com/h"}, "url", "credentials", id="credentials"),
    pytest.param({"kind": "webhook", "url": "https://10.1.2.3/h"}, "url", "non-public", id="private-literal"),
    pytest.param({"kind": "webhook", "url": "https://[::ffff:127.0.0.1]/h"}, "url", "non-public", id="mapped"),
    pytest.param({"kind": "webhook", "url": "https://127.1/h"}, "url", "host name", id="short-ip-form"),
    pytest.param({"kind": "webhook", "url": "https://a..b/h"}, "url", "host name", id="empty-label"),
    pytest.param({"kind": "webhook", "url": "https://localhost/h"}, "url", "loopback name", id="localhost"),
    pytest.param({"kind": "webhook", "url": "https://a.localhost/h"}, "url", "loopback name", id="sub-localhost"),
    pytest.param({"kind": "webhook", "url": "https://[v1.x]/h"}, "url", "brackets", id="ipvfuture"),
    pytest.param({"kind": "slack", "url": "https://example.com/services/T/B/X"}, "url", "Slack", id="slack-host"),
    pytest.param({"kind": "slack", "url": "https://hooks.slack.com/x"}, "url", "Slack", id="slack-path"),
    pytest.param({"kind": "discord", "url": "https://example.com/api/webhooks/1/t"}, "url", "Discord", id="discord"),
    pytest.param({"kind": "telegram", "bot_token": "123:abc", "chat_id": "42"}, "bot_token", "Telegram", id="token"),
    pytest.param({"kind": "telegram", "bot_token": TOKEN, "chat_id": "a chat"}, "chat_id", "Telegram", id="chat-id"),
]


@pytest.mark.parametrize(("body", "field", "words"), BAD_TARGETS)
async def test_bad_subscription_targets_are_422_naming_the_field(
    make_stack: StackFactory, body: dict[str, Any], field: str, words: str
) -> None:
    """A target that could never be sent to is refused at creation with 422 naming the field (never a
    500), nothing is stored, and a bot token is not echoed back."""
    stack = await make_stack(workers=False, notify_allow_private=False)
    message = assert_422(await stack.client.post("/v1/subscriptions", json=body), field)
    assert words in message
    assert "123:abc" not in message
    assert (await stack.client.get("/v1/subscriptions")).json()["subscriptions"] == []


async def test_a_name_resolving_into_the_private_network_is_422_without_the_address(
    make_stack: StackFactory,
) -> None:
    """A name that resolves to a non-public address is refused at creation; the message names the host
    but never the address it resolved to."""
    stack = await make_stack(workers=False, notify_allow_private=False)
    stack.services.subscriptions.resolver = Resolutions({"internal.example.com": ["93.184.216.34", "10.20.30.40"]})
    response = await stack.client.post(
        "/v1/subscriptions", json={"kind": "webhook", "url": "https://internal.example.com/h"}
    )
    message = assert_422(response, "url")
    assert "internal.example.com" in message and "non-public" in message
    assert "10.20.30.40" not in message and "93.184.216.34" not in response.text


async def test_dns_failure_at_creation_does_not_refuse_the_subscription(make_stack: StackFactory) -> None:
    """A lookup that fails while a subscription is created lets it through (every send checks again)."""
    stack = await make_stack(workers=False, notify_allow_private=False)
    stack.services.subscriptions.resolver = Resolutions({})
    response = await stack.client.post("/v1/subscriptions", json={"kind": "slack", "url": SLACK_URL})
    assert response.status_code == 201, response.text
    assert response.json()["url"] == SLACK_URL.rsplit("/", 1)[0] + "/***"  # the secret part is never shown


@pytest.mark.parametrize(
    ("callback_url", "allow_private", "words"),
    [
        ("https://[::1/h", True, "not a valid URL"),
        ("https://example.com:70000/h", True, "not a valid URL"),
        ("ftp://example.com/h", True, "ftp scheme"),
        ("http://example.com/h", False, "http scheme"),
        ("https://169.254.169.254/latest", False, "non-public"),
        ("https://localhost/x", False, "host localhost is a loopback name"),
        ("HTTPS://LOCALHOST/x", False, "host localhost is a loopback name"),
        ("https://a.localhost/x", False, "host a.localhost is a loopback name"),
        ("https://[v1.x]/", True, "only an IPv6 address may be written in brackets"),
    ],
    ids=[
        "unclosed-ipv6",
        "port-range",
        "ftp",
        "plain-http",
        "metadata-address",
        "localhost",
        "LOCALHOST",
        "sub-localhost",
        "ipvfuture",
    ],
)
async def test_bad_callback_url_is_422_naming_it(
    make_stack: StackFactory, callback_url: str, allow_private: bool, words: str
) -> None:
    """A job's callback_url passes the same rules as a subscription URL: 422 naming callback_url (in the
    rule's own words, without pydantic's "Value error" wrapper), no job."""
    stack = await make_stack(workers=False, notify_allow_private=allow_private)
    body = {"provider": "fal", "model": "fal-ai/stepx-edit2", "callback_url": callback_url}
    body["input"] = {"prompt": "red", "image_url": SMALL_PNG_URI}
    message = assert_422(await stack.client.post("/v1/jobs", json=body), "callback_url")
    assert words in message and "Value error" not in message, message
    assert await read_rows(stack.services.db.path, "SELECT id FROM jobs") == []


async def test_target_stored_before_the_rules_is_dead_after_one_attempt(
    make_stack: StackFactory, chat: tuple[ChatEmulator, str]
) -> None:
    """A subscription whose URL was stored malformed (before creation checked it) is dead after one
    logged attempt saying why, and nothing is sent."""
    emulator, _ = chat
    stack = await make_stack(**FAST)
    row = {"kind": "slack", "url": "https://[::1/services/T/B/X", "config": "{}", "secret": None}
    row |= {"events": json.dumps(["job.succeeded"]), "filter": "{}", "now": time.time()}
    await stack.services.db.write(lambda tx: subscriptions.insert_subscription(tx, "sub_legacy", **row))
    job = await stack.create_job()
    delivery = await delivery_of(stack, job["id"])
    assert delivery["attempts"] == 1
    [attempt] = delivery["attempt_log"]
    assert "invalid target: url: not a valid URL" in attempt["error"] and "not retried" in attempt["error"]
    assert emulator.received == []


async def test_rejected_bot_token_is_dead_after_one_attempt(
    make_stack: StackFactory, chat: tuple[ChatEmulator, str]
) -> None:
    """Telegram's 401 for a bot token it does not know is final: dead after one attempt, token not shown."""
    emulator, chat_url = chat
    stack = await make_stack(telegram_api_url=f"{chat_url}/telegram")  # the real, day-long schedule
    body = {"kind": "telegram", "bot_token": OTHER_TOKEN, "chat_id": "42", "events": ["job.succeeded"]}
    assert (await stack.client.post("/v1/subscriptions", json=body)).status_code == 201
    job = await stack.create_job()
    delivery = await delivery_of(stack, job["id"], final=("dead", "failed"))
    assert (delivery["status"], delivery["attempts"]) == ("dead", 1)
    assert "Unauthorized" in delivery["last_error"] and OTHER_TOKEN not in delivery["last_error"]
    assert [request.status for request in emulator.received] == [401]


async def test_gone_callback_is_dead_after_one_attempt(
    make_stack: StackFactory, chat: tuple[ChatEmulator, str]
) -> None:
    """A callback_url answering 410 Gone is not retried for a day: dead after one attempt."""
    emulator, chat_url = chat
    emulator.fail_next = [410] * 8
    stack = await make_stack()  # the real, day-long schedule
    body = {"provider": "fal", "model": "fal-ai/stepx-edit2", "callback_url": f"{chat_url}/slack/callback"}
    body["input"] = {"prompt": "red", "image_url": SMALL_PNG_URI}
    job = (await stack.client.post("/v1/jobs", json=body)).json()
    delivery = await delivery_of(stack, job["id"], final=("dead", "failed"))
    assert (delivery["status"], delivery["attempts"]) == ("dead", 1)
    assert len(emulator.received) == 1


async def test_name_resolving_into_the_private_network_at_send_is_dead_at_once(make_stack: StackFactory) -> None:
    """A subscription stored while DNS was down, whose name then resolves to loopback, is dead after one
    attempt; the error names the host, never the address."""
    stack = await make_stack(notify_allow_private=False, **FAST)
    stack.services.subscriptions.resolver = Resolutions({})  # DNS down while the subscription is created
    # `localhost` is refused without DNS; the machine's own name resolves to loopback or a private address.
    name = socket.gethostname().lower()
    body = {"kind": "webhook", "url": f"https://{name}/hook", "events": ["job.succeeded"]}
    assert (await stack.client.post("/v1/subscriptions", json=body)).status_code == 201
    job = await stack.create_job()
    delivery = await delivery_of(stack, job["id"], final=("dead", "failed"))
    assert (delivery["status"], delivery["attempts"]) == ("dead", 1)
    assert f"host {name} resolves to a non-public address" in delivery["last_error"]
    assert "127.0.0.1" not in delivery["last_error"] and "::1" not in delivery["last_error"]
