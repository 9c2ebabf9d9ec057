"""Slow request bodies over real HTTP: read under a deadline before the one-at-a-time parse, buffers bounded."""

from __future__ import annotations

import asyncio
import json
import time

from bench.big_bodies import noise_png_data_uri
from tests.helpers.http import RawConnection, assert_raw_error_shape
from tests.helpers.stack import Stack, StackFactory

WAIT_S = 10.0  # bound on every wait for the server; never an assertion about speed
MIB = 1024 * 1024


def job_body(side: int) -> bytes:
    """A fal job whose input image is a data URI: over 256 KiB from side 300 on (a "big" body)."""
    job_input = {"prompt": "make it red", "image_url": noise_png_data_uri(side)}
    return json.dumps({"provider": "fal", "model": "fal-ai/stepx-edit2", "input": job_input}).encode()


async def start_slow_upload(stack: Stack, declared: int) -> RawConnection:
    """A POST /v1/jobs declaring `declared` bytes, of which it sends only the first few."""
    connection = await RawConnection.open(stack)
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    await connection.send(head.encode() + b'{"provider": "fal", "model": "fal-ai/stepx-edit2", "input": {"prompt": "')
    return connection


async def test_a_slow_upload_holds_no_slot_and_gets_408(make_stack: StackFactory) -> None:
    """A 300 KB body trickling in keeps no one waiting: a normal 300 KB job sent meanwhile gets 202 at once,
    and the slow one gets 408 in the JSON error shape once its deadline passes."""
    stack = await make_stack(workers=False, body_timeout_s=2.0)
    body = job_body(300)
    assert len(body) > 300_000
    began = time.monotonic()  # before the upload starts, so its deadline ends at least 2 s after this
    slow = await start_slow_upload(stack, len(body))

    response = await stack.client.post(
        "/v1/jobs", content=body, headers={"Content-Type": "application/json"}, timeout=WAIT_S
    )

    assert response.status_code == 202, response.text[:300]
    answer = await asyncio.wait_for(slow.response(), WAIT_S)
    assert_raw_error_shape(answer, 408)
    assert answer is not None and json.loads(answer[2])["error"]["code"] == "request_timeout"
    assert "RECEIVER_BODY_TIMEOUT_S" in json.loads(answer[2])["error"]["message"]
    assert answer[1]["connection"] == "close"
    assert time.monotonic() - began >= 1.5  # answered at its deadline, not before
    await slow.close()


async def test_a_slow_small_body_gets_408(make_stack: StackFactory) -> None:
    """A small body that stops arriving is answered 408 after RECEIVER_BODY_TIMEOUT_S, not waited for forever."""
    stack = await make_stack(workers=False, body_timeout_s=0.5)
    slow = await start_slow_upload(stack, 1000)

    answer = await asyncio.wait_for(slow.response(), WAIT_S)

    assert_raw_error_shape(answer, 408)
    await slow.close()
    assert (await stack.client.get("/v1/jobs")).status_code == 200


async def test_a_steady_big_upload_may_take_longer_than_the_timeout(make_stack: StackFactory) -> None:
    """The deadline is a minimum rate (1 MiB per RECEIVER_BODY_TIMEOUT_S): a 4 MB body sent steadily over
    about twice the timeout is taken whole."""
    stack = await make_stack(workers=False, body_timeout_s=1.0)
    body = job_body(1100)
    assert len(body) > 4 * MIB
    connection = await RawConnection.open(stack)
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    await connection.send(head.encode())
    began = time.monotonic()
    piece = 64 * 1024
    for start in range(0, len(body), piece):
        await connection.send(body[start : start + piece])
        await asyncio.sleep(0.4 * piece / MIB)  # 1 MiB per 0.4 s: 2.5 times the least rate
    assert time.monotonic() - began > 1.0

    answer = await asyncio.wait_for(connection.response(), WAIT_S)

    assert answer is not None and answer[0] == 202, answer
    await connection.close()


async def test_big_bodies_past_the_buffer_limit_get_503_busy(make_stack: StackFactory) -> None:
    """Four big bodies being read are the most held at once: a fifth gets 503 `busy` with Retry-After before
    it is read, a small job is still served, and once the slow clients leave big jobs are taken again."""
    stack = await make_stack(workers=False, body_timeout_s=30.0)
    body = job_body(300)
    slow = [await start_slow_upload(stack, len(body)) for _ in range(4)]
    headers = {"Content-Type": "application/json"}

    deadline = time.monotonic() + WAIT_S
    while True:  # the four heads reach the server asynchronously: poll until they hold every buffer
        response = await stack.client.post("/v1/jobs", content=body, headers=headers)
        if response.status_code != 202 or time.monotonic() > deadline:
            break
    assert response.status_code == 503, response.text[:300]
    assert response.json()["error"]["code"] == "busy"
    assert response.headers["retry-after"] == "1"
    small = await stack.client.post("/v1/jobs", content=job_body(8), headers=headers)
    assert small.status_code == 202, small.text[:300]

    for connection in slow:
        await connection.close()
    deadline = time.monotonic() + WAIT_S
    while (response := await stack.client.post("/v1/jobs", content=body, headers=headers)).status_code == 503:
        assert time.monotonic() < deadline, "the buffers of the closed connections were never freed"
        await asyncio.sleep(0.02)
    assert response.status_code == 202, response.text[:300]


async def test_a_client_without_the_token_holds_no_buffer(make_stack: StackFactory) -> None:
    """With RECEIVER_API_TOKEN set, a big body without the token is refused 401 before it is read, so four
    such slow uploads leave every buffer free for the token holder."""
    stack = await make_stack(workers=False, body_timeout_s=30.0, api_token="test-token")
    body = job_body(300)
    slow = [await start_slow_upload(stack, len(body)) for _ in range(4)]
    answers = [await asyncio.wait_for(connection.response(), WAIT_S) for connection in slow]
    assert all(answer is not None and answer[0] == 401 for answer in answers), answers

    headers = {"Content-Type": "application/json", "Authorization": "Bearer test-token"}
    response = await stack.client.post("/v1/jobs", content=body, headers=headers)

    assert response.status_code == 202, response.text[:300]
    for connection in slow:
        await connection.close()
