"""The chat-service emulator (Slack, Discord, Telegram) on a real loopback server: answers, records, faults."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from receiver.emulators.chat import ChatEmulator
from receiver.web.asgi_server import running_server
from tests.helpers.images import png_bytes

TOKEN = "123456:ABC-def_ghi"
SLACK_PATH = "/slack/services/T000/B000/XXXXXXXX"
DISCORD_PATH = "/discord/api/webhooks/42/tok-en"


# Every test shares one server (started once per module), so they run on the module's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served() -> AsyncIterator[tuple[ChatEmulator, str]]:
    emulator = ChatEmulator(telegram_token=TOKEN, clock=lambda: 1_700_000_000.0)
    async with running_server(emulator.app) as url:
        yield emulator, url


@pytest_asyncio.fixture(loop_scope="module")
async def chat(served: tuple[ChatEmulator, str]) -> AsyncIterator[tuple[ChatEmulator, httpx.AsyncClient]]:
    emulator, url = served
    emulator.reset()
    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
        yield emulator, client


async def test_slack_answers_ok_and_records_the_json(chat: tuple[ChatEmulator, httpx.AsyncClient]) -> None:
    """A Slack post with text answers 200 `ok` (plain text, like Slack) and is recorded with its JSON."""
    emulator, client = chat
    response = await client.post(SLACK_PATH, json={"text": "hello", "blocks": []})
    assert (response.status_code, response.text) == (200, "ok")
    [record] = emulator.received
    assert (record.service, record.path, record.json, record.status) == (
        "slack",
        SLACK_PATH,
        {"text": "hello", "blocks": []},
        200,
    )


@pytest.mark.parametrize(
    ("kwargs", "answer"),
    [({"content": b"not json"}, "invalid_payload"), ({"json": {"blocks": []}}, "no_text")],
    ids=["not-json", "no-text"],
)
async def test_slack_refuses_bad_payloads(
    chat: tuple[ChatEmulator, httpx.AsyncClient], kwargs: dict[str, object], answer: str
) -> None:
    """Slack answers 400 with a plain-text code for a body that is not JSON or has nothing to show."""
    _, client = chat
    response = await client.post(SLACK_PATH, **kwargs)  # type: ignore[arg-type]
    assert (response.status_code, response.text) == (400, answer)


async def test_discord_multipart_upload_is_recorded(chat: tuple[ChatEmulator, httpx.AsyncClient]) -> None:
    """A Discord multipart post answers 204 and keeps `payload_json` and the uploaded file's bytes."""
    emulator, client = chat
    image = png_bytes(6, 4)
    payload = {"content": "done", "embeds": [{"image": {"url": "attachment://a.png"}}]}
    response = await client.post(
        DISCORD_PATH, data={"payload_json": json.dumps(payload)}, files={"files[0]": ("a.png", image, "image/png")}
    )
    assert response.status_code == 204
    [record] = emulator.requests_for("discord")
    assert json.loads(record.form["payload_json"]) == payload
    assert record.files == {"files[0]": ("a.png", "image/png", image)}


@pytest.mark.parametrize(
    ("body", "code"),
    [({}, 50006), ({"content": "x" * 2001}, 50035)],
    ids=["empty", "content-too-long"],
)
async def test_discord_refuses_invalid_messages(
    chat: tuple[ChatEmulator, httpx.AsyncClient], body: dict[str, object], code: int
) -> None:
    """Discord answers 400 with its JSON error code for an empty message or content over 2000 chars."""
    _, client = chat
    response = await client.post(DISCORD_PATH, json=body)
    assert response.status_code == 400
    assert response.json()["code"] == code


async def test_telegram_send_photo_answers_like_the_bot_api(chat: tuple[ChatEmulator, httpx.AsyncClient]) -> None:
    """sendPhoto answers `ok: true` with the message: chat, caption and the photo's real size."""
    emulator, client = chat
    image = png_bytes(6, 4)
    response = await client.post(
        f"/telegram/bot{TOKEN}/sendPhoto",
        data={"chat_id": "1001", "caption": "done"},
        files={"photo": ("r.png", image, "image/png")},
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["ok"] is True
    result = answer["result"]
    assert (result["chat"]["id"], result["caption"], result["date"]) == (1001, "done", 1_700_000_000)
    assert (result["photo"][0]["width"], result["photo"][0]["height"], result["photo"][0]["file_size"]) == (
        6,
        4,
        len(image),
    )
    assert emulator.received[0].files["photo"] == ("r.png", "image/png", image)


async def test_telegram_send_message_accepts_json(chat: tuple[ChatEmulator, httpx.AsyncClient]) -> None:
    """sendMessage takes a JSON body and echoes the text in the result."""
    _, client = chat
    response = await client.post(f"/telegram/bot{TOKEN}/sendMessage", json={"chat_id": "@news", "text": "hi"})
    assert response.json()["result"]["text"] == "hi"


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "description"),
    [
        (f"/telegram/bot{TOKEN}/sendMessage", {"json": {"chat_id": "missing", "text": "x"}}, 400, "chat not found"),
        (f"/telegram/bot{TOKEN}/sendMessage", {"json": {"chat_id": "1", "text": ""}}, 400, "text is empty"),
        (f"/telegram/bot{TOKEN}/sendMessage", {"json": {"text": "x"}}, 400, "chat_id is empty"),
        (f"/telegram/bot{TOKEN}/sendMessage", {"json": {"chat_id": "1", "text": "x" * 4097}}, 400, "too long"),
        (f"/telegram/bot{TOKEN}/sendPhoto", {"data": {"chat_id": "1"}}, 400, "no photo"),
        ("/telegram/bot1:wrong/sendMessage", {"json": {"chat_id": "1", "text": "x"}}, 401, "Unauthorized"),
        (f"/telegram/bot{TOKEN}/getMe", {"json": {}}, 404, "Not Found"),
    ],
    ids=["chat-not-found", "empty-text", "no-chat", "text-too-long", "no-photo", "bad-token", "unknown-method"],
)
async def test_telegram_errors_use_the_bot_api_envelope(
    chat: tuple[ChatEmulator, httpx.AsyncClient], path: str, kwargs: dict[str, object], status: int, description: str
) -> None:
    """Telegram refusals answer `{"ok": false, "error_code", "description"}` with the matching HTTP status."""
    _, client = chat
    response = await client.post(path, **kwargs)  # type: ignore[arg-type]
    answer = response.json()
    assert (response.status_code, answer["ok"], answer["error_code"]) == (status, False, status)
    assert description in answer["description"]


async def test_telegram_refuses_a_photo_that_is_not_an_image(chat: tuple[ChatEmulator, httpx.AsyncClient]) -> None:
    """A `photo` Pillow cannot read is refused as Telegram does (IMAGE_PROCESS_FAILED)."""
    _, client = chat
    response = await client.post(
        f"/telegram/bot{TOKEN}/sendPhoto", data={"chat_id": "1"}, files={"photo": ("x.png", b"nope", "image/png")}
    )
    assert "IMAGE_PROCESS_FAILED" in response.json()["description"]


async def test_fail_next_is_consumed_in_order(chat: tuple[ChatEmulator, httpx.AsyncClient]) -> None:
    """Injected statuses answer the next requests one each, with each service's error body, then normal."""
    emulator, client = chat
    emulator.fail_next = [500, 404, 410]
    first = await client.post(SLACK_PATH, json={"text": "a"})
    second = await client.post(DISCORD_PATH, json={"content": "b"})
    third = await client.post(f"/telegram/bot{TOKEN}/sendMessage", json={"chat_id": "1", "text": "c"})
    fourth = await client.post(SLACK_PATH, json={"text": "d"})
    assert (first.status_code, first.text) == (500, "rollup_error")
    assert (second.status_code, second.json()["code"]) == (404, 10015)
    assert (third.status_code, third.json()["ok"]) == (410, False)
    assert (fourth.status_code, fourth.text) == (200, "ok")
    assert [r.status for r in emulator.received] == [500, 404, 410, 200]


@pytest.mark.parametrize(
    ("path", "check"),
    [
        (SLACK_PATH, "rate_limited"),
        (DISCORD_PATH, "rate limited"),
        (f"/telegram/bot{TOKEN}/sendMessage", "retry after"),
    ],
    ids=["slack", "discord", "telegram"],
)
async def test_rate_limit_answers_say_when_to_come_back(
    chat: tuple[ChatEmulator, httpx.AsyncClient], path: str, check: str
) -> None:
    """An injected 429 carries the wait: a Retry-After header (Slack, Discord) or `parameters.retry_after`."""
    emulator, client = chat
    emulator.fail_next, emulator.retry_after_s = [429], 7
    response = await client.post(path, json={"chat_id": "1", "text": "x", "content": "x"})
    assert response.status_code == 429
    assert check in response.text
    if path.startswith("/telegram"):
        assert response.json()["parameters"]["retry_after"] == 7
    else:
        assert response.headers["retry-after"] == "7"


async def test_config_route_sets_faults_and_redirects(chat: tuple[ChatEmulator, httpx.AsyncClient]) -> None:
    """`POST /_emulator/config` sets fail_next and the redirect target; an injected 302 points there."""
    emulator, client = chat
    response = await client.post("/_emulator/config", json={"fail_next": [302], "redirect_to": "/_emulator/redirected"})
    assert response.json()["fail_next"] == [302]
    redirected = await client.post(SLACK_PATH, json={"text": "x"})
    assert (redirected.status_code, redirected.headers["location"]) == (302, "/_emulator/redirected")
    assert emulator.requests_for("redirect") == []


@pytest.mark.parametrize(
    "body", [{"fail_next": [200]}, {"unknown": 1}, {"retry_after_s": -1}], ids=["2xx", "unknown-field", "negative"]
)
async def test_config_route_refuses_invalid_settings(
    chat: tuple[ChatEmulator, httpx.AsyncClient], body: dict[str, object]
) -> None:
    """Config patches are validated: faults are 3xx-5xx, fields are known, waits are not negative."""
    emulator, client = chat
    response = await client.post("/_emulator/config", json=body)
    assert response.status_code == 422
    assert emulator.fail_next == []


async def test_requests_route_lists_what_was_received(chat: tuple[ChatEmulator, httpx.AsyncClient]) -> None:
    """`GET /_emulator/requests` summarises each request, with file sizes instead of bytes."""
    _, client = chat
    await client.post(
        f"/telegram/bot{TOKEN}/sendPhoto",
        data={"chat_id": "1"},
        files={"photo": ("r.png", png_bytes(6, 4), "image/png")},
    )
    [summary] = (await client.get("/_emulator/requests")).json()
    assert summary["service"] == "telegram"
    assert summary["files"]["photo"]["bytes"] == len(png_bytes(6, 4))
