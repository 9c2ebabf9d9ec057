"""`GET /v1/stream` limits over real HTTP: at most RECEIVER_STREAM_MAX_CLIENTS open streams, and a new
client without Last-Event-ID starts at the present."""

from __future__ import annotations

import asyncio
import time

from tests.helpers.database import read_rows
from tests.helpers.stack import StackFactory
from tests.helpers.streams import open_stream, read_until


async def test_streams_past_the_limit_get_503_with_retry_after(make_stack: StackFactory) -> None:
    """With two streams open and a limit of two, a third client gets 503 in the error shape with
    Retry-After; once one stream closes, a new one is accepted."""
    stack = await make_stack(workers=False, stream_max_clients=2, stream_ping_s=0.05)
    async with open_stream(stack) as first, open_stream(stack):
        await read_until(first, "retry:")
        refused = await stack.client.get("/v1/stream", params={"limit_s": "0.1"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "too_many_streams"
        assert "RECEIVER_STREAM_MAX_CLIENTS" in refused.json()["error"]["message"]
    deadline = time.monotonic() + 10
    while (accepted := await stack.client.get("/v1/stream", params={"limit_s": "0.1"})).status_code != 200:
        assert time.monotonic() < deadline, "a closed stream never gave its slot back"
        await asyncio.sleep(0.02)
    assert accepted.text.startswith("retry: 2000")
    assert stack.services.hub.open_streams == 0


async def test_a_refused_stream_does_not_take_a_slot(make_stack: StackFactory) -> None:
    """Refused and malformed stream requests leave the count alone: the limit still admits its number."""
    stack = await make_stack(workers=False, stream_max_clients=1, stream_ping_s=0.05)
    for _ in range(3):
        bad = await stack.client.get("/v1/stream", headers={"Last-Event-ID": "x"})
        assert bad.status_code == 422
    assert (await stack.client.get("/v1/stream", params={"limit_s": "0.05"})).status_code == 200
    async with open_stream(stack):
        for _ in range(3):
            assert (await stack.client.get("/v1/stream", params={"limit_s": "0.05"})).status_code == 503
        assert stack.services.hub.open_streams == 1
    deadline = time.monotonic() + 10
    while stack.services.hub.open_streams:  # the server sees the client go at its next ping
        assert time.monotonic() < deadline, "a closed stream never gave its slot back"
        await asyncio.sleep(0.02)


async def test_stream_without_last_event_id_starts_at_the_present(make_stack: StackFactory) -> None:
    """A client without Last-Event-ID gets the events after it connected, not the whole log; with
    Last-Event-ID 0 it gets the log from the start."""
    stack = await make_stack()
    old = await stack.create_job()
    await stack.wait_final(old["id"])
    deadline = time.monotonic() + 10
    while not await read_rows(stack.services.db.path, "SELECT seq FROM events WHERE job_id = ?", old["id"]):
        assert time.monotonic() < deadline, "the first job's event was never recorded"
        await asyncio.sleep(0.02)  # job.succeeded is recorded once the images are stored
    async with open_stream(stack) as lines:
        await read_until(lines, "retry:")
        new = await stack.create_job()
        seen = await read_until(lines, new["id"])
    assert not any(old["id"] in line for line in seen)
    async with open_stream(stack, last_event_id="0") as lines:
        await read_until(lines, old["id"])  # the log from the start
