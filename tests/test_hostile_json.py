"""Numbers JSON cannot carry, and answers that must go out after a commit: never a stored value that breaks a read."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver import jsontext
from receiver.servers import running_server
from receiver.signatures import job_token, sign_fal, sign_wavespeed
from tests.conftest import SMALL_PNG_URI, Stack, StackFactory

JSON_HEADERS = {"Content-Type": "application/json"}
FAL_JOB = (
    b'{"provider":"fal","model":"fal-ai/stepx-edit2","input":{"prompt":"p","image_url":"https://example.com/a.png"}'
)


def strict_loads(data: bytes | str) -> Any:
    """JSON as a strict parser (a browser's JSON.parse) reads it: no NaN or Infinity."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in an answer")

    return json.loads(data, parse_constant=refuse)


async def count(stack: Stack, table: str) -> int:
    rows = await stack.services.db.fetch_all(f"SELECT COUNT(*) AS n FROM {table}")  # noqa: S608 (fixed names)
    return int(rows[0]["n"])


NON_FINITE = {
    "metadata": ("/v1/jobs", FAL_JOB + b',"metadata":{"x":1e999}}', "metadata.x"),
    "negative": ("/v1/jobs", FAL_JOB[:-1] + b',"seed":-1e999}}', "input.seed"),
    "nested": ("/v1/jobs", b'{"provider":"wavespeed","model":"x/y","input":{"a":[1,{"b":1E400}]}}', "input.a[1].b"),
    "subscription": (
        "/v1/subscriptions",
        b'{"kind":"webhook","url":"https://example.com/h","filter":{"metadata":{"k":12e308}}}',
        "filter.metadata.k",
    ),
    "replay": ("/v1/deliveries/replay", b'{"since":1.0e999}', "since"),
}


@pytest.mark.parametrize(("route", "body", "field"), list(NON_FINITE.values()), ids=list(NON_FINITE))
async def test_a_non_finite_number_is_422_naming_the_field(
    make_stack: StackFactory, route: str, body: bytes, field: str
) -> None:
    """`1e999` (which Python reads as infinity) anywhere in an API body is a 422 naming the field; nothing is
    stored, and the listings still answer."""
    stack = await make_stack(workers=False)
    response = await stack.client.post(route, content=body, headers=JSON_HEADERS)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "malformed_json"
    assert error["message"].startswith(f"{field}: is not a finite number"), error
    assert await count(stack, "jobs") == 0 and await count(stack, "subscriptions") == 0
    assert (await stack.client.get("/v1/jobs")).status_code == 200


async def submitted(stack: Stack, provider: str) -> dict[str, Any]:
    """A job submitted to its emulator (told not to deliver), so the test sends the webhook."""
    if provider == "fal":
        stack.emulator.config.no_delivery = True
        job = await stack.create_job()
    else:
        assert stack.emulators is not None
        stack.emulators.wavespeed.config.no_delivery = True
        job = await stack.create("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI})
    assert await stack.services.runner.run_once() == 1
    job = await stack.job(job["id"])
    assert job["status"] == "submitted" and job["provider_request_id"]
    return job


def signed_body(stack: Stack, provider: str, request_id: str) -> tuple[bytes, dict[str, str]]:
    """A genuine, correctly signed completion whose body holds `1e999`."""
    if provider == "fal":
        body = b'{"request_id":"%s","status":"OK","payload":{"images":[],"seed":1e999}}' % request_id.encode()
        headers = sign_fal(
            stack.signing_key, request_id=request_id, user_id="emulator-user", timestamp=int(time.time()), body=body
        )
    else:
        assert stack.emulators is not None
        body = b'{"id":"%s","status":"completed","outputs":[],"timings":{"inference":1e999}}' % request_id.encode()
        secret = stack.emulators.wavespeed.config.webhook_secret
        headers = sign_wavespeed(secret, webhook_id=uuid.uuid4().hex, timestamp=int(time.time()), body=body)
    return body, {**headers, "Content-Type": "application/json"}


@pytest.mark.parametrize("provider", ["fal", "wavespeed"])
async def test_a_signed_provider_body_with_a_non_finite_number_fails_the_job_and_is_kept(
    make_stack: StackFactory, provider: str
) -> None:
    """A validly signed webhook holding `1e999` is recorded byte for byte and fails its job with
    `malformed_provider_body` (2xx, so the provider stops resending); a resend is a duplicate; every read
    of the job still answers."""
    stack = await make_stack(workers=False)
    job = await submitted(stack, provider)
    body, headers = signed_body(stack, provider, job["provider_request_id"])
    path = f"/webhooks/{provider}/{job['id']}?token={job_token(b'test-secret', provider, job['id'])}"
    response = await stack.client.post(path, content=body, headers=headers)
    assert response.status_code == 200 and response.json() == {"status": "applied"}, response.text
    final = await stack.job(job["id"])
    assert final["status"] == "failed"
    assert final["error"]["code"] == "malformed_provider_body"
    assert "timings.inference" in final["error"]["message"] or "payload.seed" in final["error"]["message"]
    rows = await stack.services.db.fetch_all("SELECT body FROM inbox WHERE job_id = ?", (job["id"],))
    assert [bytes(row["body"]) for row in rows] == [body]
    again = await stack.client.post(path, content=body, headers=headers)
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}
    for read in ("/v1/jobs", f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/events"):
        answer = await stack.client.get(read)
        assert answer.status_code == 200, (read, answer.text)
        strict_loads(answer.content)


class Hook:
    """A subscriber on loopback recording every body it gets."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.url = ""

    async def handle(self, request: Request) -> Response:
        self.bodies.append(await request.body())
        return Response(status_code=204)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    receiver = Hook()
    async with running_server(Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])) as url:
        receiver.url = f"{url}/hook"
        yield receiver


# What rows written before the parse-time checks (or by a provider's answer) can hold: Python's json writes
# and reads back NaN and Infinity, and keeps an escaped lone surrogate.
OLD_METADATA = '{"inf":Infinity,"nan":NaN,"lone":"a\\ud800b","ok":1}'


async def test_values_stored_before_the_checks_never_break_an_answer(make_stack: StackFactory, hook: Hook) -> None:
    """A job row holding Infinity, NaN and a lone surrogate (stored before these checks) is still served by
    every read, the SSE feed and a subscriber delivery, as strict JSON with null and U+FFFD in their place."""
    stack = await make_stack(notify_retry_scale=0.0001)
    stack.emulator.config.no_delivery = True
    created = await stack.client.post("/v1/subscriptions", json={"kind": "webhook", "url": hook.url})
    assert created.status_code == 201, created.text
    job = await stack.create_job()
    await stack.wait_for(job["id"], lambda seen: seen["status"] == "submitted")

    def corrupt(conn: Any) -> None:
        conn.execute(
            "UPDATE jobs SET metadata = ?, provider_result = ? WHERE id = ?", (OLD_METADATA, "1e999", job["id"])
        )

    await stack.services.db.writer.run(corrupt)
    expected = {"inf": None, "nan": None, "lone": "a\ufffdb", "ok": 1}
    for read in ("/v1/jobs", f"/v1/jobs/{job['id']}"):
        answer = await stack.client.get(read)
        assert answer.status_code == 200, (read, answer.text)
        shown = strict_loads(answer.content)
        one = shown["jobs"][0] if "jobs" in shown else shown
        assert one["metadata"] == expected and one["provider_result"] is None
    cancelled = await stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    deadline = time.monotonic() + 15
    while not hook.bodies:
        assert time.monotonic() < deadline, "the subscriber never got the job.cancelled delivery"
        await asyncio.sleep(0.02)
    delivered = strict_loads(hook.bodies[0])
    assert delivered["type"] == "job.cancelled" and delivered["data"]["job"]["metadata"] == expected
    stream = await stack.client.get("/v1/stream", params={"limit_s": "0.3"}, headers={"Last-Event-ID": "0"})
    data = [line[6:] for line in stream.text.splitlines() if line.startswith("data: ")]
    assert data and strict_loads(data[0])["data"]["job"]["metadata"] == expected


async def test_an_encoding_failure_after_the_commit_still_answers_the_job(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When encoding the answer fails after the job was committed, the client still gets its 202 with the
    job (never a 500 for a request that took effect), and the job exists once."""
    stack = await make_stack(workers=False)
    real_dumps = json.dumps
    failures: list[str] = []

    def dumps_failing_once(value: Any, *args: Any, **kwargs: Any) -> str:
        if not failures and isinstance(value, dict) and str(value.get("id", "")).startswith("job_"):
            failures.append(value["id"])
            raise ValueError("injected: the answer could not be encoded")
        return real_dumps(value, *args, **kwargs)

    monkeypatch.setattr(json, "dumps", dumps_failing_once)
    response = await stack.client.post("/v1/jobs", content=FAL_JOB + b"}", headers=JSON_HEADERS)
    monkeypatch.undo()
    assert failures, "the encoder was never asked for the job"
    assert response.status_code == 202, response.text
    assert response.json()["id"] == failures[0] and response.json()["status"] == "pending"
    assert await count(stack, "jobs") == 1


# --- the parser and the encoder on their own ------------------------------------------------------------------

LONG = st.sampled_from(["", "x" * (jsontext.SLICE_BYTES + 7), "é" * (jsontext.SLICE_BYTES // 2 + 3)])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text() | LONG,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(value=JSON_VALUES, ascii_only=st.booleans(), spaced=st.booleans())
def test_the_strict_parser_reads_what_json_writes(value: Any, ascii_only: bool, spaced: bool) -> None:
    """Any finite JSON value, long strings included (which the parser decodes in slices), parses back equal,
    and the encoder writes it back as the same value."""
    separators = (", ", ": ") if spaced else (",", ":")
    raw = json.dumps(value, ensure_ascii=ascii_only, separators=separators).encode()
    assert jsontext.loads(raw) == value
    assert json.loads(jsontext.dumps(value)) == value
    assert json.loads(jsontext.dumps(value, big=True)) == value
