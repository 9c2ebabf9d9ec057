"""`Idempotency-Key` on `POST /v1/jobs`, over real HTTP on a real SQLite file, and the CLI's retried submit."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from receiver.app import create_app
from receiver.cli.main import app as cli_app
from receiver.jobs.idempotency import JOBS_SCOPE, RETENTION_S, IdempotencyClaim, fingerprint
from receiver.jobs.retention import Retention
from receiver.storage.base import UniqueViolation
from receiver.web.asgi_server import base_url, bind_socket, running_server
from receiver.wiring import Services, open_services
from tests.helpers.database import count_rows
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.stack import make_settings

STEPX = "fal-ai/stepx-edit2"
BODY = {"provider": "fal", "model": STEPX, "input": {"prompt": "make it red", "image_url": SMALL_PNG_URI}}
KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"


@contextlib.asynccontextmanager
async def serving(data_dir: Path) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    """The receiver on loopback over the SQLite file in `data_dir`, workers off (no provider is called)."""
    sock = bind_socket("127.0.0.1", 0)
    url = base_url(*sock.getsockname()[:2])
    async with (
        open_services(make_settings(data_dir, public_url=url)) as services,
        running_server(create_app(services), sock=sock),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield services, client


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    async with serving(tmp_path) as pair:
        yield pair


def post(client: httpx.AsyncClient, body: Any, key: str | bytes | None = KEY) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post("/v1/jobs", json=body, headers=headers)


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The one error shape with this status and code; returns the message."""
    assert response.status_code == status, response.text
    assert response.json() == {"error": {"code": code, "message": response.json()["error"]["message"]}}
    message: str = response.json()["error"]["message"]
    return message


async def test_same_key_and_body_returns_the_same_job(server: tuple[Services, httpx.AsyncClient]) -> None:
    """A retry with the same key and body answers 200 with the first job and `Idempotent-Replayed: true`."""
    services, client = server
    first = await post(client, BODY)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    # The same JSON with keys in another order and other whitespace is the same request.
    input_reversed = dict(reversed(BODY["input"].items()))
    reordered = json.dumps({"input": input_reversed, "model": STEPX, "provider": "fal"}, indent=2)
    headers = {"Idempotency-Key": KEY, "Content-Type": "application/json"}
    for again in [await post(client, BODY), await client.post("/v1/jobs", content=reordered, headers=headers)]:
        assert again.status_code == 200, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["location"] == f"/v1/jobs/{first.json()['id']}"
        assert again.json()["id"] == first.json()["id"] and again.json()["status"] == "pending"
    assert await count_rows(services.db.path, "jobs") == 1
    assert await count_rows(services.db.path, "tasks") == 1


async def test_large_and_chunked_bodies_replay_too(server: tuple[Services, httpx.AsyncClient]) -> None:
    """A body over 64 KiB (fingerprinted off the event loop), sent again chunked, is the same request."""
    services, client = server
    pixels = random.Random(7).randbytes(160 * 160 * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (160, 160), pixels).save(buffer, "PNG")
    image_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = json.dumps({**BODY, "input": {**BODY["input"], "image_url": image_uri}}).encode()
    assert len(content) > 64 * 1024
    headers = {"Idempotency-Key": KEY, "Content-Type": "application/json"}
    first = await client.post("/v1/jobs", content=content, headers=headers)
    assert first.status_code == 202, first.text

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 8192):
            yield content[start : start + 8192]

    again = await client.post("/v1/jobs", content=chunks(), headers=headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert await count_rows(services.db.path, "jobs") == 1


async def test_same_key_with_another_body_is_409(server: tuple[Services, httpx.AsyncClient]) -> None:
    """The same key with a different body answers 409 `idempotency_key_reused`, naming the header; no new job."""
    services, client = server
    assert (await post(client, BODY)).status_code == 202
    other = {**BODY, "input": {**BODY["input"], "prompt": "make it blue"}}
    message = assert_error(await post(client, other), 409, "idempotency_key_reused")
    assert "Idempotency-Key" in message and "different request body" in message
    # Even an invalid body: the key is known, so its misuse is what the caller hears about.
    assert_error(await post(client, {"provider": "fal"}), 409, "idempotency_key_reused")
    assert await count_rows(services.db.path, "jobs") == 1


async def test_concurrent_requests_with_one_key_make_one_job(server: tuple[Services, httpx.AsyncClient]) -> None:
    """Eight simultaneous requests with one key: exactly one job row; one 202, the others 200 with its id."""
    services, client = server
    responses = await asyncio.gather(*(post(client, BODY, "race-key") for _ in range(8)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 7 + [202], [r.text for r in responses]
    assert len({response.json()["id"] for response in responses}) == 1
    assert await count_rows(services.db.path, "jobs") == 1
    assert await count_rows(services.db.path, "idempotency_keys") == 1


async def test_the_transaction_decides_not_the_read(server: tuple[Services, httpx.AsyncClient]) -> None:
    """Concurrent creates with one key that skip the route's read-only shortcut still make one job."""
    services, _ = server
    claim = IdempotencyClaim(JOBS_SCOPE, "direct", fingerprint(BODY))
    created = await asyncio.gather(*(services.jobs.create(BODY, idempotency=claim) for _ in range(8)))
    assert sorted(replayed for _, replayed in created) == [False] + [True] * 7
    assert len({job.id for job, _ in created}) == 1
    assert await count_rows(services.db.path, "jobs") == 1


async def test_key_and_job_are_written_together(server: tuple[Services, httpx.AsyncClient]) -> None:
    """When the job insert fails after the key was claimed, the key is rolled back with it."""
    services, client = server
    existing = (await post(client, BODY, None)).json()["id"]
    claim = IdempotencyClaim(JOBS_SCOPE, "orphan", fingerprint(BODY))
    with pytest.raises(UniqueViolation):  # the job id is taken: the job row cannot be inserted
        await services.store.create_job(
            job_id=existing, provider="fal", model=STEPX, input={}, metadata=None, callback_url=None,
            now=services.clock(), idempotency=claim,
        )  # fmt: skip
    assert await count_rows(services.db.path, "idempotency_keys") == 0
    assert (await post(client, BODY, "orphan")).status_code == 202


async def test_requests_without_a_key_are_not_deduplicated(server: tuple[Services, httpx.AsyncClient]) -> None:
    """Without the header every request is a new job, and distinct keys make distinct jobs."""
    services, client = server
    ids = {(await post(client, BODY, key)).json()["id"] for key in (None, None, "a", "b")}
    assert len(ids) == 4
    assert await count_rows(services.db.path, "jobs") == 4


async def test_key_survives_a_restart(tmp_path: Path) -> None:
    """A key stored before a restart still returns its job (same database file) and still refuses a new body."""
    async with serving(tmp_path) as (_, client):
        created = (await post(client, BODY)).json()
    async with serving(tmp_path) as (services, client):
        again = await post(client, BODY)
        assert again.status_code == 200 and again.json()["id"] == created["id"]
        other = {**BODY, "metadata": {"run": 2}}
        assert_error(await post(client, other), 409, "idempotency_key_reused")
        assert await count_rows(services.db.path, "jobs") == 1


async def test_a_refused_request_stores_no_key(server: tuple[Services, httpx.AsyncClient]) -> None:
    """A body refused with 422 stores neither job nor key: the corrected body may use the same key."""
    services, client = server
    assert_error(await post(client, {**BODY, "model": ""}), 422, "invalid_input")
    assert await count_rows(services.db.path, "idempotency_keys") == 0
    assert (await post(client, BODY)).status_code == 202


async def test_quoted_key_is_the_same_key(server: tuple[Services, httpx.AsyncClient]) -> None:
    """The IETF draft's structured-field form `"key"` names the same key as the bare form."""
    services, client = server
    first = await post(client, BODY, 'k"1')
    again = await post(client, BODY, '"k\\"1"')
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert await count_rows(services.db.path, "jobs") == 1


@pytest.mark.parametrize(
    "key",
    [b"", b"x" * 256, "clé".encode("latin-1"), b"tab\tinside", b'"unterminated', b'"bad\\escape"', b'"a"b'],
    ids=["empty", "too-long", "non-ascii", "control", "unterminated-quote", "bad-escape", "text-after-quote"],
)
async def test_malformed_key_is_400_naming_the_header(server: tuple[Services, httpx.AsyncClient], key: bytes) -> None:
    """A key that is empty, longer than 255 or not printable ASCII answers 400 naming the header; no job."""
    services, client = server
    message = assert_error(await post(client, BODY, key), 400, "invalid_idempotency_key")
    assert message.startswith("Idempotency-Key header:")
    assert await count_rows(services.db.path, "jobs") == 0


async def test_key_sent_twice_is_400(server: tuple[Services, httpx.AsyncClient]) -> None:
    """Two `Idempotency-Key` headers on one request are ambiguous: 400, no job."""
    services, client = server
    headers = [("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    response = await client.post("/v1/jobs", json=BODY, headers=headers)
    assert_error(response, 400, "invalid_idempotency_key")
    assert await count_rows(services.db.path, "jobs") == 0


async def test_longest_key_is_accepted(server: tuple[Services, httpx.AsyncClient]) -> None:
    """A 255-character key of printable ASCII (spaces and punctuation included) is a valid key."""
    _, client = server
    key = ("a b~!" * 51)[:255]
    assert (await post(client, BODY, key)).status_code == 202
    assert (await post(client, BODY, key)).status_code == 200


async def test_a_key_the_retention_sweep_deleted_makes_a_new_job(server: tuple[Services, httpx.AsyncClient]) -> None:
    """The retention sweep (at the shortest retention the settings allow, a day) keeps a key younger than its
    cutoff, so a retry still gets the first job, and deletes it once older; the key then makes a new job."""
    services, client = server
    first = (await post(client, BODY)).json()
    now = services.clock()

    def sweep(at: float) -> Retention:
        return Retention(
            services.db, services.blobs, clock=lambda: at, retention_days=1, job_retention_days=None, interval_s=60
        )

    assert (await sweep(now).run_once()).rows["idempotency_keys"] == 0
    assert (await post(client, BODY)).json()["id"] == first["id"]
    assert (await sweep(now + RETENTION_S + 1).run_once()).rows["idempotency_keys"] == 1
    fresh = await post(client, BODY)
    assert fresh.status_code == 202 and fresh.json()["id"] != first["id"]


class LossyProxy:
    """A loopback HTTP/1.1 proxy that records each request's `Idempotency-Key` and, for the first `lose`
    requests, forwards them but drops the server's answer (the client sees the connection close), or
    answers 502 itself without forwarding when `gateway_error`."""

    def __init__(self, upstream: str, *, lose: int, gateway_error: bool = False) -> None:
        self.upstream_port = int(upstream.rsplit(":", 1)[1])
        self.lose, self.gateway_error = lose, gateway_error
        self.keys: list[str | None] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return base_url(*self.server.sockets[0].getsockname()[:2])

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            while request := await read_message(reader):
                self.keys.append(header_value(request, "idempotency-key"))
                lost = len(self.keys) <= self.lose
                if lost and self.gateway_error:
                    writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                upstream_writer.write(request)
                await upstream_writer.drain()
                response = await read_message(upstream_reader)
                if lost:
                    return  # the server has answered (after its commit); the client never hears it
                writer.write(response)
                await writer.drain()
        finally:
            writer.close()
            upstream_writer.close()


def header_value(message: bytes, name: str) -> str | None:
    """The value of header `name` (lower case) in an HTTP/1.1 message's head."""
    for line in message.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]:
        field, _, value = line.partition(":")
        if field.lower() == name:
            return value.strip()
    return None


async def read_message(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 message framed by Content-Length (what httpx and uvicorn send here); b"" at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    return head + await reader.readexactly(int(header_value(head, "content-length") or 0))


async def run_submit(url: str, *extra: str) -> Result:
    """`receiver submit --json` in this process (on a thread, so the servers on this loop keep serving)."""
    args = ["submit", "--provider", "fal", "--model", STEPX, "--image", SMALL_PNG_URI, "--prompt", "make it red"]
    return await asyncio.to_thread(CliRunner().invoke, cli_app, [*args, "--json", "--url", url, *extra])


@pytest.mark.parametrize("gateway_error", [False, True], ids=["answer-lost-after-commit", "gateway-502"])
async def test_cli_submit_retries_under_one_key(
    server: tuple[Services, httpx.AsyncClient], gateway_error: bool
) -> None:
    """`receiver submit` whose first answer is lost (or a 502) retries with the same key and makes one job."""
    services, client = server
    proxy = LossyProxy(str(client.base_url).rstrip("/"), lose=1, gateway_error=gateway_error)
    try:
        result = await run_submit(await proxy.start())
    finally:
        await proxy.close()
    assert result.exit_code == 0, result.output
    assert len(proxy.keys) == 2 and proxy.keys[0] and proxy.keys[0] == proxy.keys[1]
    job = json.loads(result.stdout)
    assert await count_rows(services.db.path, "jobs") == 1
    assert (await client.get(f"/v1/jobs/{job['id']}")).status_code == 200


async def test_cli_submit_gives_up_after_its_retries(server: tuple[Services, httpx.AsyncClient]) -> None:
    """When every answer is lost, `receiver submit` stops after 4 tries of one key, exits 1 and names the key."""
    services, client = server
    proxy = LossyProxy(str(client.base_url).rstrip("/"), lose=100)
    try:
        result = await run_submit(await proxy.start())
    finally:
        await proxy.close()
    assert result.exit_code == 1
    assert len(proxy.keys) == 4 and len(set(proxy.keys)) == 1
    assert f"--idempotency-key {proxy.keys[0]}" in result.output
    assert await count_rows(services.db.path, "jobs") == 1


async def test_cli_submit_keys(server: tuple[Services, httpx.AsyncClient]) -> None:
    """Each `receiver submit` sends a fresh key; `--idempotency-key` pins one, so running it twice is one job."""
    services, client = server
    proxy = LossyProxy(str(client.base_url).rstrip("/"), lose=0)
    try:
        url = await proxy.start()
        fresh = [await run_submit(url), await run_submit(url)]
        pinned = [await run_submit(url, "--idempotency-key", "order-17") for _ in range(2)]
    finally:
        await proxy.close()
    assert all(result.exit_code == 0 for result in fresh + pinned), [result.output for result in fresh + pinned]
    assert proxy.keys[0] != proxy.keys[1] and proxy.keys[2:] == ["order-17", "order-17"]
    ids = [json.loads(result.stdout)["id"] for result in fresh + pinned]
    assert ids[0] != ids[1] and ids[2] == ids[3]
    assert await count_rows(services.db.path, "jobs") == 3
