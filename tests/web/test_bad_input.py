"""Hostile and broken requests over real HTTP: oversized, slow, malformed, mistyped, traversing; never a 5xx."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from receiver.web.http import MAX_JSON_DEPTH
from tests.helpers.database import count_rows
from tests.helpers.http import RawConnection, assert_error_shape, assert_raw_error_shape
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.provider_webhooks import webhook_path
from tests.helpers.stack import Stack, StackFactory

CAP = 65_536  # max_body_bytes of these stacks: over the deeply nested bodies below, under the big ones
TABLES = ("jobs", "inbox", "subscriptions", "inputs", "deliveries")
# A URL image, so the sanity job stores no served input: every table's count is then exact.
VALID_JOB = {
    "provider": "fal",
    "model": "fal-ai/stepx-edit2",
    "input": {"prompt": "red", "image_url": "https://example.com/a.png"},
}


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack(workers=False, max_body_bytes=CAP)


async def counts(stack: Stack) -> dict[str, int]:
    return {table: await count_rows(stack.services.db.path, table) for table in TABLES}


async def assert_still_serving_and_nothing_recorded(stack: Stack, before: dict[str, int] | None = None) -> None:
    """A normal request still works, and no job, inbox event, subscription or input was stored."""
    response = await stack.client.post("/v1/jobs", json=VALID_JOB)
    assert response.status_code == 202, response.text
    expected = {table: 0 for table in TABLES} if before is None else before
    expected = {**expected, "jobs": expected["jobs"] + 1}
    assert await counts(stack) == expected


async def webhook_url(stack: Stack, provider: str) -> str:
    """The webhook path of a real job, with its token: a request to it reaches the body and the signature."""
    model, field = ("fal-ai/stepx-edit2", "image_url") if provider == "fal" else ("wavespeed-ai/step1x-edit", "image")
    job = await stack.create(provider, model, {"prompt": "red", field: SMALL_PNG_URI})
    return webhook_path(provider, job["id"])


async def chunks(data: bytes, size: int = 512) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- oversized bodies -------------------------------------------------------------------------------------------

BIG_JOB = json.dumps({**VALID_JOB, "input": {**VALID_JOB["input"], "negative_prompt": "x" * (2 * CAP)}}).encode()
BODY_ROUTES = ["/v1/jobs", "/v1/subscriptions", "/v1/deliveries/replay", "webhook:fal", "webhook:wavespeed"]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_body_over_the_cap_is_413_and_records_nothing(stack: Stack, declared: bool) -> None:
    """A body over `max_body_bytes`, declared or streamed without a length, answers 413 and stores nothing,
    on every route that reads a body."""
    for route in BODY_ROUTES:
        path = await webhook_url(stack, route.split(":")[1]) if route.startswith("webhook:") else route
        before = await counts(stack)
        content: bytes | AsyncIterator[bytes] = BIG_JOB if declared else chunks(BIG_JOB)
        response = await stack.client.post(path, content=content, headers={"Content-Type": "application/json"})
        assert_error_shape(response, 413, "payload_too_large")
        assert await counts(stack) == before, route
        await assert_still_serving_and_nothing_recorded(stack, before)


async def test_a_declared_length_over_the_cap_is_refused_before_the_body_arrives(stack: Stack) -> None:
    """`Content-Length: 10^12` with no body sent answers 413 at once: the server does not wait for the bytes."""
    connection = await RawConnection.open(stack)
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000000\r\n\r\n"
    )
    await connection.send(head)
    assert_raw_error_shape(await connection.response(), 413)
    await connection.close()
    await assert_still_serving_and_nothing_recorded(stack)


# --- slow clients -----------------------------------------------------------------------------------------------


async def test_a_client_dribbling_its_headers_does_not_hold_up_others(stack: Stack) -> None:
    """Headers sent a byte at a time (slowloris) tie up only that connection; others are served meanwhile.

    uvicorn has no deadline for a request's head (a proxy in front should set one); the server stays
    responsive, and answers the slow request normally once it is complete."""
    connection = await RawConnection.open(stack)
    body = json.dumps(VALID_JOB).encode()
    head = f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    head += "\r\n"
    for index, byte in enumerate(head.encode()):
        await connection.send(bytes([byte]))
        if index % 20 == 0:
            assert (await stack.client.get("/healthz")).status_code == 200
        await asyncio.sleep(0.002)
    await connection.send(b"\r\n" + body)
    answer = await connection.response()
    assert answer is not None and answer[0] == 202
    await connection.close()


@pytest.mark.parametrize("finish", [True, False], ids=["completes", "gives-up"])
async def test_a_client_dribbling_its_body_does_not_hold_up_others(
    stack: Stack, finish: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A body sent in small pieces slowly does not stall other requests; one abandoned midway stores nothing
    and is not logged as a server error.

    uvicorn sets no deadline for a body either: the slow request ends when it completes or the client leaves."""
    connection = await RawConnection.open(stack)
    body = json.dumps({**VALID_JOB, "metadata": {"slow": True}}).encode()
    head = f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    head += "\r\n\r\n"
    await connection.send(head.encode())
    half = len(body) // 2 // 16 * 16
    for start in range(0, half, 16):
        await connection.send(body[start : start + 16])
        assert (await stack.client.get("/healthz")).status_code == 200
        await asyncio.sleep(0.005)
    if finish:
        await connection.send(body[half:])
        answer = await connection.response()
        assert answer is not None and answer[0] == 202
        await connection.close()
        return
    with caplog.at_level(logging.DEBUG, logger="receiver.web.http"):
        await connection.close()
        for _ in range(500):  # bounded wait for the server to notice the closed socket
            if any("disconnected" in record.getMessage() for record in caplog.records):
                break
            await asyncio.sleep(0.01)
        await assert_still_serving_and_nothing_recorded(stack)
    messages = [record.getMessage() for record in caplog.records]
    assert any("disconnected before its body was complete" in message for message in messages)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


# --- malformed JSON ---------------------------------------------------------------------------------------------

DEEP = 10_000
MALFORMED = {
    "truncated": b'{"provider": "fal", "model": "fal-ai/stepx-edit2", "input": {"prompt": "re',
    "empty": b"",
    "nan": b'{"provider": "fal", "model": "fal-ai/stepx-edit2", "input": {"seed": NaN}}',
    "infinity": b"-Infinity",
    "deep-arrays": b"[" * DEEP + b"]" * DEEP,
    "deep-objects": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "deep-in-input": b'{"provider":"wavespeed","model":"x/y","input":{"a":' + b"[" * DEEP + b"]" * DEEP + b"}}",
    "invalid-utf8": b'{"provider": "fal\xff\xfe", "model": "m", "input": {}}',
    "utf16": '{"provider": "fal"}'.encode("utf-16"),
    "trailing-garbage": b'{"provider": "fal"} x',
    "not-an-object": b'["provider", "fal"]',
    "lone-surrogate": b'{"provider":"wavespeed","model":"x/y","input":{"prompt":"\\ud800"}}',
    "lone-surrogate-metadata": b'{"provider":"fal","model":"fal-ai/stepx-edit2","input":{"prompt":"red",'
    b'"image_url":"https://example.com/a.png"},"metadata":{"k":"\\udfff"}}',
}
JSON_ROUTES = ["/v1/jobs", "/v1/subscriptions", "/v1/deliveries/replay"]


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_json_is_422_in_the_shape(stack: Stack, body: bytes) -> None:
    """Broken, non-strict or absurdly nested JSON answers 422 in the error shape on every JSON route, never a 5xx."""
    for route in JSON_ROUTES:
        before = await counts(stack)
        response = await stack.client.post(route, content=body, headers={"Content-Type": "application/json"})
        assert_error_shape(response, 422)
        await assert_still_serving_and_nothing_recorded(stack, before)


async def test_moderately_deep_input_is_refused_not_stored_unreadably(stack: Stack) -> None:
    """A passed-through input nested deeper than `MAX_JSON_DEPTH` is a 422 naming the field, not a stored job."""
    body = b'{"provider":"wavespeed","model":"x/y","input":{"a":' + b"[" * 900 + b"]" * 900 + b"}}"
    response = await stack.client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert_error_shape(response, 422, "malformed_json")
    assert response.json()["error"]["message"].startswith(f"input.a{'[0]' * (MAX_JSON_DEPTH - 2)}: nested deeper")
    await assert_still_serving_and_nothing_recorded(stack)


# --- content types ----------------------------------------------------------------------------------------------

CONTENT_TYPES: dict[str, tuple[dict[str, str], bytes, int]] = {
    "text-plain": ({"Content-Type": "text/plain"}, json.dumps(VALID_JOB).encode(), 415),
    "form": ({"Content-Type": "application/x-www-form-urlencoded"}, b"provider=fal", 415),
    "multipart": ({"Content-Type": "multipart/form-data; boundary=b"}, b"--b\r\n\r\nx\r\n--b--\r\n", 415),
    "xml": ({"Content-Type": "application/xml"}, b"<job/>", 415),
    "missing-not-json": ({}, b"provider=fal", 415),
    "missing-json": ({}, json.dumps(VALID_JOB).encode(), 415),
    "json-suffix": ({"Content-Type": "application/jsonx"}, json.dumps(VALID_JOB).encode(), 415),
    "json-in-parameter": ({"Content-Type": "text/plain; a=application/json"}, json.dumps(VALID_JOB).encode(), 415),
}


@pytest.mark.parametrize(("headers", "body", "status"), list(CONTENT_TYPES.values()), ids=list(CONTENT_TYPES))
async def test_wrong_content_type_is_415(stack: Stack, headers: dict[str, str], body: bytes, status: int) -> None:
    """A body not declared as `application/json` (exactly that media type, or none at all) is 415."""
    for route in JSON_ROUTES:
        before = await counts(stack)
        request = stack.client.build_request("POST", route, content=body, headers=headers)
        assert ("content-type" in request.headers) == bool(headers)
        response = await stack.client.send(request)
        assert_error_shape(response, status)
        await assert_still_serving_and_nothing_recorded(stack, before)


# --- headers ----------------------------------------------------------------------------------------------------

HUGE = {"64k-value": [("X-Big", "a" * 65_536)], "1m-value": [("X-Big", "a" * 1_048_576)]}
HUGE["many"] = [(f"X-H{n}", "v") for n in range(2_000)]
HUGE["64k-authorization"] = [("Authorization", "Bearer " + "a" * 65_536)]
HUGE["64k-signature"] = [("X-Fal-Webhook-Signature", "a" * 65_536)]


@pytest.mark.parametrize("headers", list(HUGE.values()), ids=list(HUGE))
async def test_huge_headers_never_get_a_5xx(stack: Stack, headers: list[tuple[str, str]]) -> None:
    """Oversized header values or counts never get a 5xx, and the server keeps serving.

    uvicorn's httptools parser sets no limit on header size or count, so these reach the app, which answers
    them like any other request (here a 4xx for the bodies); a 431 or a closed connection would pass too."""
    for path in ["/v1/jobs", await webhook_url(stack, "fal")]:
        before = await counts(stack)
        connection = await RawConnection.open(stack)
        body = json.dumps({"provider": "nope"}).encode()
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
        lines += [f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers]
        await connection.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        answer = await connection.response()
        await connection.close()
        assert answer is None or 400 <= answer[0] < 500, answer
        await assert_still_serving_and_nothing_recorded(stack, before)


# --- methods and paths ------------------------------------------------------------------------------------------

METHODS = [
    ("PUT", "/v1/jobs"),
    ("PATCH", "/v1/jobs/job_x"),
    ("DELETE", "/v1/jobs"),
    ("GET", "/webhooks/fal/job_x"),
    ("PUT", "/webhooks/wavespeed/job_x"),
    ("POST", "/v1/images/" + "a" * 64),
    ("DELETE", "/inputs/key"),
    ("POST", "/healthz"),
    ("OPTIONS", "/v1/subscriptions"),
    ("POST", "/openapi.json"),
]


@pytest.mark.parametrize(("method", "path"), METHODS, ids=[f"{m} {p}" for m, p in METHODS])
async def test_unrouted_methods_are_405_in_the_shape(stack: Stack, method: str, path: str) -> None:
    """A method a route does not take answers 405 in the error shape, with an Allow header."""
    response = await stack.client.request(method, path)
    assert_error_shape(response, 405, "method_not_allowed")
    assert response.headers["allow"]
    await assert_still_serving_and_nothing_recorded(stack)


async def test_a_method_http_does_not_know_is_refused_by_uvicorn(stack: Stack) -> None:
    """An unparseable method never reaches the app: uvicorn answers 400 (plain text), and keeps serving."""
    connection = await RawConnection.open(stack)
    await connection.send(b"BREW /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
    answer = await connection.response()
    await connection.close()
    assert answer is None or answer[0] == 400
    await assert_still_serving_and_nothing_recorded(stack)


TRAVERSALS = [
    "/v1/images/..%2f..%2fsecret_key",
    "/v1/images/..%2F..%2F..%2Fetc%2Fpasswd",
    "/v1/images/%2e%2e",
    "/v1/images/../../secret_key",
    "/v1/images/..",
    "/v1/images/" + "A" * 64,
    "/v1/images/..%5c..%5csecret_key",
    "/v1/images/%00" + "a" * 63,
    "/inputs/..%2fsecret_key",
    "/inputs/../../secret_key",
    "/inputs/%2e%2e%2f%2e%2e%2freceiver.db",
    "/inputs/..",
    "/inputs/%00",
    "/webhooks/..%2ffal/job_x",
]


@pytest.mark.parametrize("path", TRAVERSALS, ids=TRAVERSALS)
async def test_path_traversal_is_404_in_the_shape(stack: Stack, path: str) -> None:
    """Dot segments and encoded separators in image and input keys never reach the file system: 404."""
    (stack.services.settings.data_dir / "secret_key").write_text("do-not-serve")
    connection = await RawConnection.open(stack)  # raw: clients would normalise the dot segments away
    method = "POST" if path.startswith("/webhooks/") else "GET"
    await connection.send(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode())
    answer = await connection.response()
    await connection.close()
    assert_raw_error_shape(answer, 404)
    assert answer is not None and b"do-not-serve" not in answer[2]
    await assert_still_serving_and_nothing_recorded(stack)


# --- query strings ----------------------------------------------------------------------------------------------

QUERIES = [
    ("/v1/jobs", {"limit": "9" * 5000}),
    ("/v1/jobs", {"limit": "²"}),
    ("/v1/deliveries", {"limit": "9" * 5000}),
    ("/v1/deliveries", {"since": "nan"}),
    ("/v1/deliveries", {"until": "inf"}),
    ("/v1/deliveries", {"since": "1e999"}),
    ("/v1/stream", {"last_event_id": "9" * 40}),
    ("/v1/stream", {"limit_s": "soon"}),
    ("/v1/stream", {"limit_s": "nan"}),
    ("/v1/stream", {"limit_s": "-1"}),
]


@pytest.mark.parametrize(("path", "params"), QUERIES, ids=[f"{p}?{next(iter(q))}" for p, q in QUERIES])
async def test_absurd_query_values_are_422(stack: Stack, path: str, params: dict[str, str]) -> None:
    """Query values out of every range (thousands of digits, NaN, infinities) answer 422, not 500."""
    response = await stack.client.get(path, params=params)
    assert_error_shape(response, 422, "invalid_input")
    await assert_still_serving_and_nothing_recorded(stack)


CONTROL_QUERIES = [
    ("/v1/jobs", {"status": "\x00"}),
    ("/v1/jobs", {"cursor": "job\x00"}),
    ("/v1/deliveries", {"job_id": "job\x01x"}),
    ("/v1/images/" + "a" * 64, {"thumbnail": "1\x7f"}),
]


@pytest.mark.parametrize(
    ("path", "params"), CONTROL_QUERIES, ids=[f"{p[:12]}?{next(iter(q))}" for p, q in CONTROL_QUERIES]
)
async def test_control_characters_in_the_query_are_400_before_any_query(
    stack: Stack, path: str, params: dict[str, str]
) -> None:
    """A NUL or other control character in a query value is refused at the edge (400 `bad_request`), before it
    reaches a database query: PostgreSQL's text cannot hold NUL, and no stored value has one."""
    response = await stack.client.get(path, params=params)
    assert_error_shape(response, 400, "bad_request")
    assert "control character" in response.json()["error"]["message"]
    await assert_still_serving_and_nothing_recorded(stack)


REPLAYS: list[Any] = [
    {"job_id": {"$ne": None}},
    {"subscription_id": ["a", "b"]},
    {"status": "dead", "since": "yesterday"},
    {"status": "dead", "extra": 1},
    {"until": 1e308, "status": 5},
    {"since": "inf"},
    "dead",
    None,
]


@pytest.mark.parametrize("body", REPLAYS, ids=[json.dumps(body)[:30] for body in REPLAYS])
async def test_replay_filters_of_the_wrong_type_are_422(stack: Stack, body: Any) -> None:
    """Replay filters that are not strings or numbers answer 422 naming the field, not a database error."""
    content = json.dumps(body).encode()
    response = await stack.client.post(
        "/v1/deliveries/replay", content=content, headers={"Content-Type": "application/json"}
    )
    assert_error_shape(response, 422, "invalid_input")
    await assert_still_serving_and_nothing_recorded(stack)
