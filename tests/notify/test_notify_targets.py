"""One notification attempt per target kind, over real loopback HTTP; the retry schedule; chat text."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook
from starlette.responses import JSONResponse, Response

from receiver.emulators.chat import ChatEmulator
from receiver.notify import RETRY_SCHEDULE_S, ImageAttachment, Message, Target, describe, new_secret, next_delay, send
from receiver.notify.redaction import REDACTED, redact
from receiver.notify.targets import target_problem
from receiver.web.asgi_server import running_server
from tests.helpers.images import png_bytes
from tests.helpers.receivers import HookReceiver
from tests.helpers.servers import silent_server

on_shared_loop = pytest.mark.asyncio(loop_scope="module")  # async tests share the module's servers and loop

TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"  # the shape of Telegram's documented example
SECRET = new_secret()
PAYLOAD: dict[str, Any] = {
    "schema_version": 1,
    "id": "evt_1",
    "type": "job.failed",
    "timestamp": "2024-01-01T00:00:00+00:00",
    "data": {
        "job": {
            "id": "job_01ABC",
            "provider": "fal",
            "model": "fal-ai/stepx-edit2",
            "status": "failed",
            "error": {"code": "provider_error", "message": "NSFW content detected"},
            "images": [{"url": "https://hooks.example.com/v1/images/abc"}],
        }
    },
}


IMAGE = ImageAttachment(png_bytes(8, 6), "image/png", "result.png", "https://hooks.example.com/v1/images/abc")


def message(*, image: ImageAttachment | None = IMAGE, text: str | None = None) -> Message:
    return Message(
        "msg_01XYZ", "job.failed", PAYLOAD, text if text is not None else describe("job.failed", PAYLOAD), image
    )


@dataclass
class Servers:
    hook: HookReceiver
    hook_url: str
    chat: ChatEmulator
    chat_url: str
    silent_url: str  # accepts connections and never answers


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def servers() -> AsyncIterator[Servers]:
    hook, chat = HookReceiver(default_status=204), ChatEmulator(telegram_token=TOKEN)
    async with hook.running(), running_server(chat.app) as chat_url, silent_server() as silent:
        yield Servers(hook, hook.base, chat, chat_url, silent)


@pytest_asyncio.fixture(loop_scope="module")
async def env(servers: Servers) -> AsyncIterator[tuple[Servers, httpx.AsyncClient]]:
    servers.hook.reset()
    servers.chat.reset()
    async with httpx.AsyncClient(trust_env=False) as client:
        yield servers, client


async def deliver(client: httpx.AsyncClient, target: Target, msg: Message | None = None, **options: Any) -> Any:
    options.setdefault("allow_private", True)
    return await send(client, target, msg or message(), now=time.time(), **options)


# Webhooks and callbacks


@pytest.mark.parametrize("kind", ["webhook", "callback"], ids=["webhook", "callback"])
@on_shared_loop
async def test_webhook_is_signed_json_the_reference_library_accepts(
    env: tuple[Servers, httpx.AsyncClient], kind: Any
) -> None:
    """The payload goes as compact JSON with Standard Webhooks headers that verify; the id is the message's."""
    servers, client = env
    attempt = await deliver(client, Target(kind, f"{servers.hook_url}/hooks/in", (SECRET,)))
    assert (attempt.ok, attempt.status_code, attempt.error, attempt.gone) == (True, 204, None, False)
    assert attempt.latency_ms >= 0
    [(path, headers, body)] = servers.hook.hooks
    assert path == "/hooks/in"
    assert Webhook(SECRET).verify(body, headers) == PAYLOAD
    assert headers["webhook-id"] == "msg_01XYZ"
    assert headers["content-type"] == "application/json"
    assert body == json.dumps(PAYLOAD, separators=(",", ":")).encode()


@on_shared_loop
async def test_webhook_with_rotated_secrets_verifies_under_each(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """During a rotation both the new and the old secret verify the same delivery."""
    servers, client = env
    old = new_secret()
    await deliver(client, Target("webhook", f"{servers.hook_url}/h", (SECRET, old)))
    [(_, headers, body)] = servers.hook.hooks
    for secret in (SECRET, old):
        Webhook(secret).verify(body, headers)


@pytest.mark.parametrize(
    ("status", "gone"),
    [(500, False), (400, False), (404, False), (410, True)],
    ids=["500", "400", "404", "410-gone"],
)
@on_shared_loop
async def test_error_status_is_a_failed_attempt(
    env: tuple[Servers, httpx.AsyncClient], status: int, gone: bool
) -> None:
    """A non-2xx answer is a failure carrying its status and the receiver's words; only 410 means gone."""
    servers, client = env
    servers.hook.answers.append(Response("database is down", status_code=status))
    attempt = await deliver(client, Target("webhook", f"{servers.hook_url}/h", (SECRET,)))
    assert (attempt.ok, attempt.status_code, attempt.gone, attempt.retry_after_s) == (False, status, gone, None)
    assert attempt.error == f"HTTP {status} from 127.0.0.1: database is down"


@on_shared_loop
async def test_redirect_is_a_failure_and_never_followed(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """A 302 fails the attempt with a clear reason; the Location is never requested."""
    servers, client = env
    servers.hook.answers.append(Response(status_code=302, headers={"Location": f"{servers.hook_url}/elsewhere"}))
    attempt = await deliver(client, Target("webhook", f"{servers.hook_url}/h", (SECRET,)))
    assert (attempt.ok, attempt.status_code, attempt.gone) == (False, 302, False)
    assert "redirects are not followed" in (attempt.error or "")
    assert [path for path, _, _ in servers.hook.hooks] == ["/h"]


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [(429, "7", 7.0), (503, "120", 120.0), (429, None, None), (429, "soon", None), (500, "7", None)],
    ids=["429", "503", "429-no-header", "429-bad-header", "500-ignored"],
)
@on_shared_loop
async def test_retry_after_is_reported_for_429_and_503(
    env: tuple[Servers, httpx.AsyncClient], status: int, header: str | None, expected: float | None
) -> None:
    """429 and 503 carry the receiver's Retry-After (delta seconds) back to the scheduler."""
    servers, client = env
    headers = {"Retry-After": header} if header is not None else {}
    servers.hook.answers.append(Response(status_code=status, headers=headers))
    attempt = await deliver(client, Target("webhook", f"{servers.hook_url}/h", (SECRET,)))
    assert (attempt.ok, attempt.retry_after_s) == (False, expected)


@on_shared_loop
async def test_timeout_is_a_failure_naming_it(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """A receiver that never answers fails the attempt once timeout_s is up, with the timeout named."""
    servers, client = env
    attempt = await deliver(client, Target("webhook", f"{servers.silent_url}/h", (SECRET,)), timeout_s=0.2)
    assert (attempt.ok, attempt.status_code, attempt.gone) == (False, None, False)
    assert "Timeout" in (attempt.error or "")
    assert "0.2 s" in (attempt.error or "")


@on_shared_loop
async def test_connection_refused_is_a_transport_failure(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """Nobody listening is a failed attempt naming the transport error, not an exception."""
    _, client = env
    with socket_closed_port() as port:
        attempt = await deliver(client, Target("webhook", f"http://127.0.0.1:{port}/h", (SECRET,)))
    assert (attempt.ok, attempt.status_code) == (False, None)
    assert (attempt.error or "").startswith("ConnectError")


@contextlib.contextmanager
def socket_closed_port() -> Any:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]  # bound but not listening: connections are refused
    finally:
        sock.close()


async def resolve_to_loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


async def resolve_to_public(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


async def resolve_nothing(host: str, port: int) -> list[str]:
    raise OSError("Name or service not known")


@pytest.mark.parametrize(
    ("url_kind", "reason"),
    [("http", "http scheme is not allowed"), ("https-to-loopback", "non-public address")],
    ids=["plain-http", "name-resolving-to-loopback"],
)
@on_shared_loop
async def test_private_targets_are_blocked_without_a_request(
    env: tuple[Servers, httpx.AsyncClient], url_kind: str, reason: str
) -> None:
    """With allow_private off, loopback targets fail at the SSRF guard, for good, and nothing is sent; the
    error names the host given, never the address it resolved to."""
    servers, client = env
    port = servers.hook_url.rsplit(":", 1)[1]
    url = f"{servers.hook_url}/h" if url_kind == "http" else f"https://hooks.example.test:{port}/h"
    target = Target("webhook", url, (SECRET,))
    attempt = await deliver(client, target, allow_private=False, resolver=resolve_to_loopback)
    assert (attempt.ok, attempt.status_code, attempt.gone, attempt.permanent) == (False, None, False, True)
    assert reason in (attempt.error or "")
    assert "not retried" in (attempt.error or "")
    if url_kind != "http":
        assert "hooks.example.test" in (attempt.error or "") and "127.0.0.1" not in (attempt.error or "")
    assert servers.hook.hooks == []


@on_shared_loop
async def test_dns_failure_is_a_failed_attempt(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """A host that does not resolve is a failure naming it, to be retried like any other."""
    _, client = env
    target = Target("webhook", "https://nowhere.example.test/h", (SECRET,))
    attempt = await deliver(client, target, allow_private=False, resolver=resolve_nothing)
    assert (attempt.ok, attempt.gone) == (False, False)
    assert "cannot resolve nowhere.example.test" in (attempt.error or "")


# Slack


@on_shared_loop
async def test_slack_gets_text_section_and_image_blocks(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """Slack receives `text` plus a mrkdwn section and an image block pointing at the public URL."""
    servers, client = env
    attempt = await deliver(client, Target("slack", f"{servers.chat_url}/slack/services/T0/B0/XYZ"))
    assert (attempt.ok, attempt.status_code) == (True, 200), attempt.error
    [record] = servers.chat.requests_for("slack")
    body = record.json
    assert body["text"] == describe("job.failed", PAYLOAD)
    section, image = body["blocks"]
    assert section == {"type": "section", "text": {"type": "mrkdwn", "text": body["text"]}}
    assert (image["type"], image["image_url"]) == ("image", IMAGE.public_url)
    assert image["alt_text"]


@pytest.mark.parametrize(
    "image",
    [None, ImageAttachment(png_bytes(8, 6), "image/png", "r.png", None)],
    ids=["no-image", "image-without-public-url"],
)
@on_shared_loop
async def test_slack_without_public_image_url_has_no_image_block(
    env: tuple[Servers, httpx.AsyncClient], image: ImageAttachment | None
) -> None:
    """Slack can only show images by URL: without a public URL only the text section is sent."""
    servers, client = env
    await deliver(client, Target("slack", f"{servers.chat_url}/slack/services/T0/B0/XYZ"), message(image=image))
    [record] = servers.chat.requests_for("slack")
    assert [block["type"] for block in record.json["blocks"]] == ["section"]


@on_shared_loop
async def test_slack_text_cannot_mention_the_channel(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """Provider text is escaped so `<!channel>` and links arrive as literal text."""
    servers, client = env
    await deliver(
        client, Target("slack", f"{servers.chat_url}/slack/services/T0/B0/XYZ"), message(text="a <!channel> & b")
    )
    assert servers.chat.received[0].json["text"] == "a &lt;!channel&gt; &amp; b"


@pytest.mark.parametrize(
    ("kind", "path", "status", "gone"),
    [
        ("slack", "/slack/services/T0/B0/XYZ", 404, True),
        ("slack", "/slack/services/T0/B0/XYZ", 500, False),
        ("discord", "/discord/api/webhooks/1/t", 404, True),
        ("discord", "/discord/api/webhooks/1/t", 403, False),
    ],
    ids=["slack-no-service", "slack-500", "discord-unknown-webhook", "discord-403"],
)
@on_shared_loop
async def test_chat_service_says_the_webhook_is_gone(
    env: tuple[Servers, httpx.AsyncClient], kind: Any, path: str, status: int, gone: bool
) -> None:
    """Slack's `no_service` and Discord's Unknown Webhook (404s) mean gone; other refusals do not."""
    servers, client = env
    servers.chat.fail_next = [status]
    attempt = await deliver(client, Target(kind, f"{servers.chat_url}{path}"))
    assert (attempt.ok, attempt.status_code, attempt.gone) == (False, status, gone)


CHAT_PATHS = {"slack": "/slack/services/T0/B0/XYZ", "discord": "/discord/api/webhooks/1/t"}


@pytest.mark.parametrize(
    ("kind", "status", "permanent"),
    [
        ("slack", 400, True),
        ("slack", 403, True),
        ("slack", 429, False),
        ("slack", 500, False),
        ("discord", 400, True),
        ("discord", 401, True),
        ("discord", 403, True),
        ("discord", 503, False),
        ("telegram", 400, True),
        ("telegram", 401, True),
        ("telegram", 404, True),
        ("telegram", 429, False),
        ("telegram", 500, False),
    ],
    ids=lambda value: str(value),
)
@on_shared_loop
async def test_chat_refusals_no_retry_can_fix_are_permanent(
    env: tuple[Servers, httpx.AsyncClient], kind: Any, status: int, permanent: bool
) -> None:
    """A chat service's bad-payload, bad-token, forbidden or no-such-chat answer is permanent; 429 and 5xx
    are not."""
    servers, client = env
    servers.chat.fail_next = [status]
    if kind == "telegram":
        attempt = await deliver(client, telegram(), telegram_api_url=f"{servers.chat_url}/telegram")
    else:
        attempt = await deliver(client, Target(kind, f"{servers.chat_url}{CHAT_PATHS[kind]}"))
    assert (attempt.ok, attempt.status_code, attempt.gone, attempt.permanent) == (False, status, False, permanent)
    assert ("not retried" in (attempt.error or "")) == permanent
    assert TOKEN not in (attempt.error or "")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422], ids=str)
@on_shared_loop
async def test_webhook_4xx_is_retried(env: tuple[Servers, httpx.AsyncClient], status: int) -> None:
    """A webhook receiver is someone's own server: its 4xx (a deploy, a secret rotation) is worth retrying."""
    servers, client = env
    servers.hook.answers.append(Response(status_code=status))
    attempt = await deliver(client, Target("webhook", f"{servers.hook_url}/h", (SECRET,)))
    assert (attempt.ok, attempt.status_code, attempt.gone, attempt.permanent) == (False, status, False, False)


# Discord


@on_shared_loop
async def test_discord_uploads_the_image_with_payload_json(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """Discord gets multipart `payload_json` (content, embed titled by the event) and the image as files[0]."""
    servers, client = env
    attempt = await deliver(client, Target("discord", f"{servers.chat_url}/discord/api/webhooks/42/tok"))
    assert (attempt.ok, attempt.status_code) == (True, 204)
    [record] = servers.chat.requests_for("discord")
    payload = json.loads(record.form["payload_json"])
    assert payload["content"] == describe("job.failed", PAYLOAD)
    [embed] = payload["embeds"]
    assert (embed["title"], embed["image"]) == ("job.failed", {"url": "attachment://result.png"})
    assert payload["allowed_mentions"] == {"parse": []}
    assert record.files == {"files[0]": ("result.png", "image/png", IMAGE.data)}


@on_shared_loop
async def test_discord_without_image_is_plain_json(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """Without an image Discord receives a JSON body with the content and no upload."""
    servers, client = env
    attempt = await deliver(
        client, Target("discord", f"{servers.chat_url}/discord/api/webhooks/42/tok"), message(image=None)
    )
    [record] = servers.chat.requests_for("discord")
    assert attempt.ok
    assert (record.json["content"], record.files) == (describe("job.failed", PAYLOAD), {})


# Telegram


def telegram(chat_id: str = "1001") -> Target:
    return Target("telegram", None, chat_id=chat_id, bot_token=TOKEN)


@on_shared_loop
async def test_telegram_send_photo_fields_and_bytes(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """sendPhoto gets chat_id, the caption and the image bytes as `photo`; the bot API's ok:true is success."""
    servers, client = env
    attempt = await deliver(client, telegram(), telegram_api_url=f"{servers.chat_url}/telegram")
    assert (attempt.ok, attempt.status_code) == (True, 200)
    [record] = servers.chat.received
    assert record.path == f"/telegram/bot{TOKEN}/sendPhoto"
    assert record.form == {"chat_id": "1001", "caption": describe("job.failed", PAYLOAD)}
    assert record.files["photo"] == ("result.png", "image/png", IMAGE.data)


@on_shared_loop
async def test_telegram_long_caption_is_cut_to_1024_units(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """A caption over 1024 UTF-16 units (emoji count double) is shortened so Telegram accepts it."""
    servers, client = env
    msg = message(text="\N{PARTY POPPER}" * 2000)
    attempt = await deliver(client, telegram(), msg, telegram_api_url=f"{servers.chat_url}/telegram")
    assert attempt.ok, attempt.error
    caption = servers.chat.received[0].form["caption"]
    assert caption.endswith("…")
    assert len(caption.encode("utf-16-le")) // 2 <= 1024


@on_shared_loop
async def test_telegram_without_image_sends_a_message(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """Without an image the bot API's sendMessage gets chat_id and the text."""
    servers, client = env
    attempt = await deliver(client, telegram(), message(image=None), telegram_api_url=f"{servers.chat_url}/telegram")
    assert attempt.ok
    [record] = servers.chat.received
    assert record.path.endswith("/sendMessage")
    assert record.json == {"chat_id": "1001", "text": describe("job.failed", PAYLOAD)}


@on_shared_loop
async def test_telegram_refusal_is_a_failure_without_the_token(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """`chat not found` fails the attempt with Telegram's description; the bot token is nowhere in it."""
    servers, client = env
    attempt = await deliver(client, telegram("missing"), telegram_api_url=f"{servers.chat_url}/telegram")
    assert (attempt.ok, attempt.status_code, attempt.gone) == (False, 400, False)
    assert "chat not found" in (attempt.error or "")
    assert TOKEN not in (attempt.error or "")


@on_shared_loop
async def test_telegram_ok_false_on_200_is_a_failure(env: tuple[Servers, httpx.AsyncClient]) -> None:
    """A 200 whose body is `{"ok": false}` is still a failed attempt."""
    servers, client = env
    servers.hook.answers.append(JSONResponse({"ok": False, "error_code": 400, "description": "Bad Request: odd"}))
    attempt = await deliver(client, telegram(), telegram_api_url=f"{servers.hook_url}/tg")
    assert (attempt.ok, attempt.status_code) == (False, 200)
    assert "Bad Request: odd" in (attempt.error or "")


@pytest.mark.parametrize(
    ("status", "retry_after", "gone"),
    [(429, 7.0, False), (403, None, True), (500, None, False)],
    ids=["429-parameters", "403-blocked", "500"],
)
@on_shared_loop
async def test_telegram_error_outcomes(
    env: tuple[Servers, httpx.AsyncClient], status: int, retry_after: float | None, gone: bool
) -> None:
    """Telegram's 429 `parameters.retry_after` becomes retry_after_s; a blocked bot (403) is gone."""
    servers, client = env
    servers.chat.fail_next, servers.chat.retry_after_s = [status], 7
    attempt = await deliver(client, telegram(), telegram_api_url=f"{servers.chat_url}/telegram")
    assert (attempt.ok, attempt.status_code, attempt.retry_after_s, attempt.gone) == (False, status, retry_after, gone)


@on_shared_loop
async def test_telegram_token_stays_out_of_errors_and_logs(
    env: tuple[Servers, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    """Neither a transport error nor httpx's request log line shows the bot token."""
    servers, client = env
    caplog.set_level(logging.DEBUG)
    with socket_closed_port() as port:
        failed = await deliver(client, telegram(), telegram_api_url=f"http://127.0.0.1:{port}")
    sent = await deliver(client, telegram(), telegram_api_url=f"{servers.chat_url}/telegram")
    assert not failed.ok and sent.ok
    assert TOKEN not in (failed.error or "")
    assert "sendPhoto" in caplog.text and REDACTED in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("POST http://1.2.3.4/bot123:abc-DEF/sendPhoto", f"POST http://1.2.3.4/bot{REDACTED}/sendPhoto"),
        (
            "https://discord.com/api/webhooks/42/s3cret?wait=1",
            f"https://discord.com/api/webhooks/42/{REDACTED}?{REDACTED}",
        ),
        ("https://hooks.slack.com/services/T0/B0/XYZ", f"https://hooks.slack.com/services/{REDACTED}"),
        ("https://x.example/h?token=abc", f"https://x.example/h?{REDACTED}"),
        ("https://x.example/bottles/1", "https://x.example/bottles/1"),
    ],
    ids=["telegram", "discord", "slack", "query", "harmless"],
)
def test_redact_hides_url_borne_credentials(text: str, expected: str) -> None:
    """Credentials in chat-service URL paths and query strings are replaced; other paths stay readable."""
    assert redact(text) == expected


# Targets


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "webhook", "url": "https://x.example/h"},
        {"kind": "callback", "url": "https://x.example/h", "secrets": ("not-whsec",)},
        {"kind": "slack", "url": None},
        {"kind": "telegram", "url": None, "bot_token": TOKEN},
        {"kind": "sms", "url": "https://x.example"},
    ],
    ids=[
        "webhook-unsigned",
        "bad-secret",
        "slack-no-url",
        "no-chat",
        "unknown-kind",
    ],
)
def test_target_refuses_incomplete_configuration(kwargs: dict[str, Any]) -> None:
    """A target missing what every send needs (or of an unknown kind) is refused when it is made."""
    with pytest.raises(ValueError):
        Target(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"kind": "telegram", "url": None, "chat_id": "1", "bot_token": "no-colon"}, "bot_token: must be"),
        ({"kind": "telegram", "url": None, "chat_id": "1", "bot_token": "123:abc"}, "bot_token: must be"),
        ({"kind": "telegram", "url": None, "chat_id": "1", "bot_token": "1:" + "a" * 30 + "/../x"}, "bot_token"),
        ({"kind": "discord", "url": "ftp://x.example/h"}, "ftp scheme"),
        ({"kind": "webhook", "url": "https://x.example:99999/h", "secrets": (SECRET,)}, "not a valid URL"),
        ({"kind": "webhook", "url": "https://x.example:0/h", "secrets": (SECRET,)}, "port 0"),
        ({"kind": "webhook", "url": "https://[::1/h", "secrets": (SECRET,)}, "not a valid URL"),
        ({"kind": "callback", "url": "https:///no-host", "secrets": (SECRET,)}, "no host"),
        ({"kind": "webhook", "url": "https://127.1/h", "secrets": (SECRET,)}, "not a valid host name"),
        ({"kind": "webhook", "url": "https://x.exa\nmple/h", "secrets": (SECRET,)}, "control characters"),
        ({"kind": "slack", "url": "https://hooks.example.com/services/T0/B0/XYZ"}, "Slack incoming-webhook URL"),
        ({"kind": "slack", "url": "https://hooks.slack.com/triggers/T0/1/x"}, "Slack incoming-webhook URL"),
        ({"kind": "discord", "url": "https://discord.example/api/webhooks/1/t"}, "Discord webhook URL"),
        ({"kind": "discord", "url": "https://discord.com/api/users/1"}, "Discord webhook URL"),
    ],
    ids=[
        "token-no-colon",
        "token-too-short",
        "token-with-path",
        "not-http",
        "port-out-of-range",
        "port-zero",
        "unclosed-ipv6",
        "no-host",
        "short-ip-form",
        "newline",
        "slack-other-host",
        "slack-workflow-path",
        "discord-other-host",
        "discord-other-path",
    ],
)
@on_shared_loop
async def test_target_that_can_never_work_fails_its_first_send_for_good(
    env: tuple[Servers, httpx.AsyncClient], kwargs: dict[str, Any], words: str
) -> None:
    """A stored target the rules refuse (bad URL, port, host, token shape, a chat URL that is not the
    service's) fails its send as permanent, with the reason and without a request or the token."""
    servers, client = env
    target = Target(**kwargs)
    attempt = await deliver(client, target, allow_private=False, resolver=resolve_to_public)
    assert (attempt.ok, attempt.status_code, attempt.permanent) == (False, None, True)
    assert (attempt.error or "").startswith("invalid target:") and words in (attempt.error or "")
    assert "not retried" in (attempt.error or "")
    assert kwargs.get("bot_token") is None or kwargs["bot_token"] not in (attempt.error or "")
    assert servers.hook.hooks == [] and servers.chat.received == []


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.slack.com/services/T0ABC/B0DEF/abcDEF123",
        "https://discord.com/api/webhooks/123456789/tok-EN_1",
        "https://discordapp.com/api/v10/webhooks/1/t?thread_id=5",
    ],
    ids=["slack", "discord", "discordapp-versioned-thread"],
)
def test_the_services_own_webhook_urls_pass_the_rules(url: str) -> None:
    """Real Slack and Discord webhook URLs pass the rules with private targets not allowed."""
    kind = "slack" if "slack" in url else "discord"
    assert target_problem(Target(kind, url), allow_private=False) is None


def test_target_repr_hides_secrets_token_and_url_path() -> None:
    """A target's repr names its kind and host, never its secrets, bot token or URL path."""
    shown = repr(Target("slack", "https://hooks.slack.com/services/T0/B0/XYZ")) + repr(telegram())
    shown += repr(Target("webhook", "https://x.example/h", (SECRET,)))
    assert "hooks.slack.com" in shown
    for hidden in ("XYZ", TOKEN, SECRET):
        assert hidden not in shown


# Retry schedule


@pytest.mark.parametrize("attempts_done", range(len(RETRY_SCHEDULE_S)), ids=lambda n: f"after-{n}")
def test_next_delay_follows_the_schedule_with_jitter(attempts_done: int) -> None:
    """Each delay is the scheduled one times 0.8-1.2; the first attempt is immediate."""
    rng = random.Random(attempts_done)
    delays = [next_delay(attempts_done, retry_after_s=None, rng=rng) for _ in range(200)]
    scheduled = RETRY_SCHEDULE_S[attempts_done]
    assert all(d is not None and 0.8 * scheduled <= d <= 1.2 * scheduled for d in delays)
    if scheduled:
        assert len(set(delays)) > 1


def test_schedule_is_the_standard_one() -> None:
    """Eight attempts: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h."""
    assert RETRY_SCHEDULE_S == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    assert next_delay(0, retry_after_s=None) == 0


@pytest.mark.parametrize("attempts_done", [8, 9, 100], ids=["spent", "past", "far-past"])
def test_next_delay_gives_up_when_spent(attempts_done: int) -> None:
    """Once the schedule is used up there is no next attempt."""
    assert next_delay(attempts_done, retry_after_s=60) is None


@given(attempts_done=st.integers(0, 7), retry_after=st.none() | st.floats(0, 10**9), seed=st.integers(0, 2**32))
def test_retry_after_is_a_capped_floor(attempts_done: int, retry_after: float | None, seed: int) -> None:
    """Retry-After raises the delay to at least its value (capped at 10 h), never lowers it."""
    delay = next_delay(attempts_done, retry_after_s=retry_after, rng=random.Random(seed))
    assert delay is not None
    scheduled = RETRY_SCHEDULE_S[attempts_done]
    assert 0.8 * scheduled <= delay <= max(1.2 * scheduled, 36000)
    if retry_after is not None:
        assert delay >= min(retry_after, 36000)


def test_next_delay_refuses_negative_attempts() -> None:
    """A negative attempt count is a programming error."""
    with pytest.raises(ValueError):
        next_delay(-1, retry_after_s=None)


# Chat text


def test_describe_a_failed_job_names_id_status_and_error() -> None:
    """The chat text of a failure has the job id, status, provider, model, error and image URL."""
    text = describe("job.failed", PAYLOAD)
    for part in ("job_01ABC", "failed", "fal", "fal-ai/stepx-edit2", "NSFW content detected", "provider_error"):
        assert part in text
    assert "https://hooks.example.com/v1/images/abc" in text


@pytest.mark.parametrize(
    "payload",
    [{}, {"data": None}, {"data": {"job": {"error": "plain text", "images": "nope"}}}, {"id": "job_bare"}],
    ids=["empty", "null-data", "odd-types", "bare-job"],
)
def test_describe_copes_with_partial_payloads(payload: dict[str, Any]) -> None:
    """Missing or oddly typed fields are left out instead of raising; the event type still shows."""
    text = describe("job.succeeded", payload)
    assert "job.succeeded" in text
