"""Subscription credentials at rest: sealed in the SQLite file and its WAL, redacted in answers, readable
after a key rotation, a clear error under a wrong key, and rows from before sealing sealed at start-up."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from receiver.emulators.chat import ChatEmulator
from receiver.errors import SealedSecretError
from receiver.notify.secrets import open_subscription, seal_stored_credentials
from receiver.storage import events, subscriptions
from receiver.storage.base import Transaction
from receiver.storage.sqlite import Database
from receiver.support.sealing import Sealer
from receiver.web.asgi_server import running_server
from receiver.wiring import open_services
from tests.helpers.database import read_rows
from tests.helpers.stack import StackFactory, make_settings, subscribe
from tests.helpers.waiting import until

SLACK_SECRET = "SlackHookSecret7fQ2"
DISCORD_SECRET = "DiscordHookToken9xK4"
BOT_TOKEN = "123456:TelegramBotToken_c8Zm-AAAAbbbbCCCCdddd"
FAST = {"notify_retry_scale": 0.0001}


@pytest.fixture
async def chat() -> AsyncIterator[tuple[ChatEmulator, str]]:
    emulator = ChatEmulator()
    async with running_server(emulator.app) as url:
        yield emulator, url


def chat_bodies(chat_url: str) -> list[dict[str, Any]]:
    return [
        {"kind": "slack", "url": f"{chat_url}/slack/services/T000/B000/{SLACK_SECRET}"},
        {"kind": "discord", "url": f"{chat_url}/discord/api/webhooks/123/{DISCORD_SECRET}"},
        {"kind": "telegram", "bot_token": BOT_TOKEN, "chat_id": "42"},
    ]


def disk_bytes(tmp_path: Path) -> bytes:
    """The database file and its WAL as they are on disk."""
    return b"".join(
        path.read_bytes() for path in (tmp_path / "receiver.db", tmp_path / "receiver.db-wal") if path.exists()
    )


def secrets_on_disk(tmp_path: Path, secrets: list[str]) -> list[str]:
    data = disk_bytes(tmp_path)
    return [secret for secret in secrets if secret.encode() in data]


async def seed(tmp_path: Path, key: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Subscriptions stored through the service under secret key `key` (then the service is closed)."""
    settings = make_settings(tmp_path, secret_key=SecretStr(key))
    async with open_services(settings) as services:
        return [await services.subscriptions.create(body) for body in bodies]


async def test_credentials_never_reach_the_database_file(
    make_stack: StackFactory, chat: tuple[ChatEmulator, str]
) -> None:
    """Secrets, bot tokens and chat webhook URLs are in neither the db nor its WAL, yet deliveries use them."""
    emulator, chat_url = chat
    stack = await make_stack(telegram_api_url=f"{chat_url}/telegram", **FAST)
    for body in chat_bodies(chat_url):
        await subscribe(stack, body)
    webhook = await subscribe(stack, {"kind": "webhook", "url": f"{chat_url}/slack/plain-hook"})
    rotated = (await stack.client.post(f"/v1/subscriptions/{webhook['id']}/rotate-secret")).json()
    job = await stack.create_job()
    await stack.wait_final(job["id"])
    # Four targets; the plain webhook's 400s are retried meanwhile, so count targets, not requests.
    await until(lambda: len({request.path for request in emulator.received}) == 4)
    paths = {request.path for request in emulator.received}
    assert f"/slack/services/T000/B000/{SLACK_SECRET}" in paths  # the sealed URL was opened to send
    assert f"/telegram/bot{BOT_TOKEN}/sendPhoto" in paths
    secrets = [SLACK_SECRET, DISCORD_SECRET, BOT_TOKEN, webhook["secret"][6:], rotated["secret"][6:]]
    assert secrets_on_disk(stack.services.settings.data_dir, secrets) == []


async def test_answers_show_chat_urls_with_the_secret_part_hidden(
    make_stack: StackFactory, chat: tuple[ChatEmulator, str]
) -> None:
    """Create, list and delivery answers show Slack/Discord URLs as .../***; a bot token never shows."""
    emulator, chat_url = chat
    stack = await make_stack(telegram_api_url=f"{chat_url}/telegram", **FAST)
    created = [await subscribe(stack, body) for body in chat_bodies(chat_url)]
    assert created[0]["url"] == f"{chat_url}/slack/services/T000/B000/***"
    assert created[1]["url"] == f"{chat_url}/discord/api/webhooks/123/***"
    job = await stack.create_job()
    await stack.wait_final(job["id"])
    await until(lambda: len(emulator.received) == 3)
    listed = (await stack.client.get("/v1/subscriptions")).text
    deliveries = (await stack.client.get("/v1/deliveries")).text
    for text in (json.dumps(created), listed, deliveries):
        assert SLACK_SECRET not in text and DISCORD_SECRET not in text and BOT_TOKEN not in text
    assert f"{chat_url}/slack/services/T000/B000/***" in deliveries


async def test_old_key_still_opens_rows_and_start_up_reseals_them(
    make_stack: StackFactory, chat: tuple[ChatEmulator, str], tmp_path: Path
) -> None:
    """After RECEIVER_SECRET_KEY changes, the old key in RECEIVER_OLD_SECRET_KEYS opens old rows, and the
    start-up sweep re-seals them under the new key."""
    emulator, chat_url = chat
    [slack, _, telegram] = await seed(tmp_path, "key-one", chat_bodies(chat_url))
    stack = await make_stack(
        telegram_api_url=f"{chat_url}/telegram", secret_key=SecretStr("key-two"), old_secret_keys="key-one"
    )
    for sub in (slack, telegram):
        answer = (await stack.client.post(f"/v1/subscriptions/{sub['id']}/test")).json()
        assert answer["ok"] is True, answer
    assert f"/slack/services/T000/B000/{SLACK_SECRET}" in {request.path for request in emulator.received}
    new_id, old_id = Sealer(b"key-two").key_id, Sealer(b"key-one").key_id
    data = disk_bytes(tmp_path)
    assert f"enc:v1:{new_id}:".encode() in data
    rows = await read_rows(stack.services.db.path, "SELECT config FROM subscriptions")
    assert all(old_id not in row["config"] for row in rows)  # nothing left that needs the old key


async def test_unknown_key_is_a_clear_error_and_the_list_still_works(
    make_stack: StackFactory, chat: tuple[ChatEmulator, str], tmp_path: Path
) -> None:
    """Under a key that did not seal the rows, the list still answers, a test send is a 503 naming the key
    ids and RECEIVER_OLD_SECRET_KEYS, and a delivery fails with that message instead of sending."""
    emulator, chat_url = chat
    [slack, *_] = await seed(tmp_path, "key-one", chat_bodies(chat_url))
    stack = await make_stack(telegram_api_url=f"{chat_url}/telegram", secret_key=SecretStr("key-two"), **FAST)
    listed = await stack.client.get("/v1/subscriptions")
    assert listed.status_code == 200 and len(listed.json()["subscriptions"]) == 3
    answer = await stack.client.post(f"/v1/subscriptions/{slack['id']}/test")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "secret_unreadable"
    assert Sealer(b"key-one").key_id in error["message"] and "RECEIVER_OLD_SECRET_KEYS" in error["message"]
    job = await stack.create_job()
    await stack.wait_final(job["id"])

    async def failed() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = (await stack.client.get("/v1/deliveries")).json()["deliveries"]
        return [row for row in rows if row["last_error"]]

    deadline = time.monotonic() + 15
    while len(await failed()) < 3:
        assert time.monotonic() < deadline, "deliveries never failed"
        await asyncio.sleep(0.02)
    assert all("RECEIVER_OLD_SECRET_KEYS" in row["last_error"] for row in await failed())
    assert emulator.received == []


async def write_legacy_rows(db_path: Path, chat_url: str) -> tuple[str, str]:
    """Rows as the version before sealing stored them: plaintext url, bot token, secret and delivery url."""
    slack_url = f"{chat_url}/slack/services/T000/B000/{SLACK_SECRET}"
    secret = "whsec_" + "TGVnYWN5V2ViaG9va1NlY3JldDEyMzQ1Ng=="
    telegram = json.dumps({"chat_id": "42", "bot_token": BOT_TOKEN})
    common: dict[str, Any] = {"events": '["job.succeeded"]', "filter": "{}", "now": 1.0}

    def write(tx: Transaction) -> None:
        insert = subscriptions.insert_subscription
        insert(tx, "sub_slack", kind="slack", url=slack_url, config="{}", secret=None, **common)
        insert(tx, "sub_tg", kind="telegram", url=None, config=telegram, secret=None, **common)
        insert(tx, "sub_hook", kind="webhook", url=f"{chat_url}/h", config="{}", secret=secret, **common)
        events.insert_event(tx, "evt_1", event_type="job.succeeded", job_id=None, payload={}, now=1.0)
        events.insert_delivery(
            tx, "dlv_1", event_id="evt_1", subscription_id="sub_slack", target="subscription", url=slack_url,
            webhook_id="msg_1", now=1.0,
        )  # fmt: skip

    db = Database(db_path)
    await db.open()
    try:
        await db.write(write)
    finally:
        await db.close()
    return slack_url, secret


async def test_plaintext_rows_from_before_sealing_are_sealed_at_start_up(
    make_stack: StackFactory, chat: tuple[ChatEmulator, str], tmp_path: Path
) -> None:
    """Rows written before sealing keep working, and after start-up no plaintext is left in the file or WAL."""
    emulator, chat_url = chat
    _, secret = await write_legacy_rows(tmp_path / "receiver.db", chat_url)
    assert secrets_on_disk(tmp_path, [SLACK_SECRET, BOT_TOKEN, secret[6:]]) != []
    stack = await make_stack(telegram_api_url=f"{chat_url}/telegram")
    assert secrets_on_disk(tmp_path, [SLACK_SECRET, BOT_TOKEN, secret[6:]]) == []
    for sub_id in ("sub_slack", "sub_tg"):
        answer = (await stack.client.post(f"/v1/subscriptions/{sub_id}/test")).json()
        assert answer["ok"] is True, answer
    assert f"/slack/services/T000/B000/{SLACK_SECRET}" in {request.path for request in emulator.received}
    [delivery] = (await stack.client.get("/v1/deliveries")).json()["deliveries"]
    assert delivery["url"] == f"{chat_url}/slack/services/T000/B000/***"
    row = await subscriptions.read_subscription(stack.services.db, "sub_hook")
    assert row is not None
    assert stack.services.deliverer.target_for(row).secrets == (secret,)


def test_sealed_value_opens_only_in_its_own_row_and_field() -> None:
    """A sealed value copied into another subscription or field does not open (associated data)."""
    sealer = Sealer(b"key")
    sealed = sealer.seal("whsec_x", context="subscription sub_a secret")
    assert sealer.unseal(sealed, context="subscription sub_a secret") == "whsec_x"
    with pytest.raises(SealedSecretError, match="altered or moved"):
        sealer.unseal(sealed, context="subscription sub_b secret")
    assert "whsec_x" not in repr(sealer) and sealed.startswith(f"enc:v1:{sealer.key_id}:")


async def test_sweep_is_idempotent(tmp_path: Path) -> None:
    """A second start-up sweep finds nothing left to seal."""
    await write_legacy_rows(tmp_path / "receiver.db", "http://127.0.0.1:9")
    db = Database(tmp_path / "receiver.db")
    await db.open()
    sealer = Sealer(b"k")
    try:
        assert await seal_stored_credentials(db, sealer) == 4  # three subscriptions and one delivery url
        assert await seal_stored_credentials(db, sealer) == 0
    finally:
        await db.close()


async def test_reprs_hold_no_key_or_credential(make_stack: StackFactory, chat: tuple[ChatEmulator, str]) -> None:
    """The services object, the sealer and an opened subscription print without the key or credentials."""
    _, chat_url = chat
    stack = await make_stack()
    [slack, *_] = [await subscribe(stack, body) for body in chat_bodies(chat_url)]
    row = await subscriptions.read_subscription(stack.services.db, slack["id"])
    assert row is not None
    opened = open_subscription(stack.services.deliverer.sealer, row)
    assert opened.url is not None and SLACK_SECRET in opened.url
    text = repr(stack.services) + repr(stack.services.deliverer.sealer) + repr(opened)
    assert "test-secret" not in text and SLACK_SECRET not in text
