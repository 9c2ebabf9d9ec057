"""Numbers JSON cannot carry, and answers that must go out after a commit: never a stored value that breaks a read."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.ingest.signatures import sign_fal, sign_wavespeed
from receiver.models import JobStatus
from receiver.storage import jobs, tasks
from receiver.storage.base import Transaction
from receiver.support import jsontext
from tests.helpers.database import count_rows, read_rows
from tests.helpers.images import SMALL_PNG_URI, png_bytes
from tests.helpers.provider_webhooks import webhook_path
from tests.helpers.receivers import HookReceiver
from tests.helpers.stack import STEPX, Stack, StackFactory
from tests.helpers.streams import open_stream, read_until
from tests.helpers.waiting import until

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
    return await count_rows(stack.services.db.path, table)


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
    # Integers past the double range are as unusable (float() of one raises, a JS reader sees Infinity).
    "huge-int": ("/v1/jobs", FAL_JOB + b',"metadata":{"x":-1' + b"0" * 400 + b"}}", "metadata.x"),
    "over-long-int": ("/v1/jobs", FAL_JOB[:-1] + b',"seed":1' + b"0" * 5000 + b"}}", "input.seed"),
    "nan": ("/v1/jobs", FAL_JOB + b',"metadata":{"x":[NaN]}}', "metadata.x[0]"),
    "infinity": ("/v1/subscriptions", b'{"kind":"webhook","url":"https://example.com/h","filter":Infinity}', "filter"),
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


def signed_body(
    stack: Stack, provider: str, request_id: str, value: bytes = b"1e999", *, user_id: str = "emulator-user"
) -> tuple[bytes, dict[str, str]]:
    """A genuine, correctly signed completion for `request_id` whose `timings.inference` is `value`."""
    now = int(time.time())
    if provider == "fal":
        body = b'{"request_id":"%s","status":"OK","payload":{"images":[],"timings":{"inference":%s}}}' % (
            request_id.encode(),
            value,
        )
        headers = sign_fal(stack.signing_key, request_id=request_id, user_id=user_id, timestamp=now, body=body)
    else:
        assert stack.emulators is not None
        template = b'{"id":"%s","status":"completed","outputs":[],"timings":{"inference":%s}}'
        body = template % (request_id.encode(), value)
        secret = stack.emulators.wavespeed.config.webhook_secret
        headers = sign_wavespeed(secret, webhook_id=uuid.uuid4().hex, timestamp=now, body=body)
    return body, {**headers, "Content-Type": "application/json"}


# What a signed body may hold that no double can: each is recorded and fails the job, never a 400 or a 500
# (either would have the provider resend the same bytes for hours).
UNUSABLE_NUMBERS = {
    "1e999": b"1e999",
    "huge-int": b"1" + b"0" * 400,
    "over-long-int": b"-1" + b"0" * 5000,
    "nan": b"NaN",
    "infinity": b"-Infinity",
}


@pytest.mark.parametrize("value", list(UNUSABLE_NUMBERS.values()), ids=list(UNUSABLE_NUMBERS))
@pytest.mark.parametrize("provider", ["fal", "wavespeed"])
async def test_a_signed_provider_body_with_a_non_finite_number_fails_the_job_and_is_kept(
    make_stack: StackFactory, provider: str, value: bytes
) -> None:
    """A validly signed webhook holding `1e999`, an integer past the double range, `NaN` or `Infinity` is
    recorded byte for byte and fails its job with `malformed_provider_body` naming the field (2xx, so the
    provider stops resending); a resend is a duplicate; every read of the job still answers."""
    stack = await make_stack(workers=False)
    job = await submitted(stack, provider)
    body, headers = signed_body(stack, provider, job["provider_request_id"], value)
    path = webhook_path(provider, job["id"])
    response = await stack.client.post(path, content=body, headers=headers)
    assert response.status_code == 200 and response.json() == {"status": "applied"}, response.text
    final = await stack.job(job["id"])
    assert final["status"] == "failed"
    assert final["error"]["code"] == "malformed_provider_body"
    assert "timings.inference: is not a finite number" in final["error"]["message"], final["error"]
    rows = await read_rows(stack.services.db.path, "SELECT body FROM inbox WHERE job_id = ?", job["id"])
    assert [bytes(row["body"]) for row in rows] == [body]
    again = await stack.client.post(path, content=body, headers=headers)
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}
    for read in ("/v1/jobs", f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/events"):
        answer = await stack.client.get(read)
        assert answer.status_code == 200, (read, answer.text)
        strict_loads(answer.content)


def lone_surrogate(stack: Stack, provider: str, request_id: str, *, user_id: str) -> tuple[bytes, dict[str, str]]:
    """A correctly signed completion for `request_id` holding a lone `\\udc00` escape."""
    return signed_body(stack, provider, request_id, b'"\\udc00"', user_id=user_id)


def non_finite(stack: Stack, provider: str, request_id: str, *, user_id: str) -> tuple[bytes, dict[str, str]]:
    return signed_body(stack, provider, request_id, b"1e999", user_id=user_id)


@pytest.mark.parametrize("unusable", [non_finite, lone_surrogate], ids=["1e999", "lone-surrogate"])
@pytest.mark.parametrize("provider", ["fal", "wavespeed"])
async def test_an_unusable_signed_body_for_another_request_is_refused_like_any_other(
    make_stack: StackFactory, provider: str, unusable: Any
) -> None:
    """A signed body holding `1e999` or a lone surrogate, signed for ANOTHER request (fal: another user's
    request id in the signed header; WaveSpeed: another prediction id), sent to a job bound to its own
    request is 409 `request_id_mismatch` exactly as a readable one is: nothing recorded, the job unchanged."""
    stack = await make_stack(workers=False, fal_user_id=None)
    job = await submitted(stack, provider)
    body, headers = unusable(stack, provider, "someone-elses-request", user_id="another-fal-user")
    response = await stack.client.post(webhook_path(provider, job["id"]), content=body, headers=headers)
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "request_id_mismatch"
    after = await stack.job(job["id"])
    assert after["status"] == "submitted" and after["error"] is None
    assert after["provider_request_id"] == job["provider_request_id"]
    assert await count(stack, "inbox") == 0


async def test_an_unusable_signed_body_from_another_fal_user_is_refused(make_stack: StackFactory) -> None:
    """With `RECEIVER_FAL_USER_ID` set, an unusable body signed for another fal user (even for the job's own
    request id) is 403 `foreign_user`, as a readable one is; then the genuine one fails the job."""
    stack = await make_stack(workers=False, fal_user_id="emulator-user")
    job = await submitted(stack, "fal")
    path = webhook_path("fal", job["id"])
    body, headers = non_finite(stack, "fal", job["provider_request_id"], user_id="another-fal-user")
    response = await stack.client.post(path, content=body, headers=headers)
    assert response.status_code == 403 and response.json()["error"]["code"] == "foreign_user", response.text
    assert (await stack.job(job["id"]))["status"] == "submitted" and await count(stack, "inbox") == 0
    body, headers = non_finite(stack, "fal", job["provider_request_id"], user_id="emulator-user")
    response = await stack.client.post(path, content=body, headers=headers)
    assert response.status_code == 200 and response.json() == {"status": "applied"}, response.text


async def test_an_unusable_signed_body_binds_a_job_not_yet_bound(make_stack: StackFactory) -> None:
    """An unusable signed fal body that beats the submit answer binds the job to its signed request id, as a
    readable one does; a later body for another request is then refused."""
    stack = await make_stack(workers=False)
    job = await stack.create_job()  # never submitted: no request id yet
    path = webhook_path("fal", job["id"])
    body, headers = lone_surrogate(stack, "fal", "the-signed-request", user_id="emulator-user")
    response = await stack.client.post(path, content=body, headers=headers)
    assert response.status_code == 200 and response.json() == {"status": "applied"}, response.text
    bound = await stack.job(job["id"])
    assert bound["provider_request_id"] == "the-signed-request"
    assert bound["status"] == "failed" and bound["error"]["code"] == "malformed_provider_body"
    body, headers = non_finite(stack, "fal", "another-request", user_id="emulator-user")
    response = await stack.client.post(path, content=body, headers=headers)
    assert response.status_code == 409 and response.json()["error"]["code"] == "request_id_mismatch"


async def test_a_polled_fal_answer_with_numbers_past_a_double_still_succeeds(make_stack: StackFactory) -> None:
    """A fal status answer and result whose inference times are integers past the double range (read
    leniently on the poll path) never break the poll: the job succeeds, without a timing."""
    stack = await make_stack(workers=False)
    job = await submitted(stack, "fal")
    [request] = stack.emulator.requests.values()
    await until(lambda: request.output is not None)
    assert request.output is not None
    request.inference_time_s = 10**400  # type: ignore[assignment]
    request.output["timings"] = {"inference": -(10**400)}
    await stack.services.db.write(lambda tx: tasks.insert(tx, "poll", job["id"], time.time()))
    assert await stack.services.runner.run_once() == 1
    final = await stack.job(job["id"])
    assert final["status"] == "succeeded", final
    assert final["result"]["timings"] is None and final["result"]["images"]


# What rows written before the parse-time checks (or by a provider's answer) can hold: Python's json writes
# and reads back NaN and Infinity, and keeps an escaped lone surrogate. The stores write this one as
# '{"inf":Infinity,"nan":NaN,"lone":"a\\ud800b","ok":1}'.
OLD_METADATA = {"inf": math.inf, "nan": math.nan, "lone": "a\ud800b", "ok": 1}


async def test_values_stored_before_the_checks_never_break_an_answer(
    make_stack: StackFactory, hook: HookReceiver
) -> None:
    """A job row holding Infinity, NaN and a lone surrogate (stored before these checks) is still served by
    every read, the SSE feed and a subscriber delivery, as strict JSON with null and U+FFFD in their place."""
    stack = await make_stack(notify_retry_scale=0.0001)
    stack.emulator.config.no_delivery = True
    created = await stack.client.post("/v1/subscriptions", json={"kind": "webhook", "url": hook.url})
    assert created.status_code == 201, created.text
    # The job as the API stores one, but for the values it refuses now.
    job_id, key = "job_old_row", "old-row-input"
    await stack.services.store.create_job(
        job_id=job_id, provider="fal", model=STEPX, metadata=OLD_METADATA, callback_url=None, now=time.time(),
        input={"prompt": "make it red", "image_url": f"{stack.services.settings.public_url}/inputs/{key}"},
        inputs=[(key, "image/png", png_bytes(16, 16, (200, 30, 30)))],
    )  # fmt: skip
    await stack.wait_for(job_id, lambda seen: seen["status"] == "submitted")

    def infinite_provider_result(tx: Transaction) -> None:
        jobs.update_status(
            tx, job_id, status=JobStatus.SUBMITTED, result=None, provider_result=math.inf, error=None,
            completed_at=None, now=time.time(),
        )  # fmt: skip

    await stack.services.db.write(infinite_provider_result)
    expected = {"inf": None, "nan": None, "lone": "a\ufffdb", "ok": 1}
    for read in ("/v1/jobs", f"/v1/jobs/{job_id}"):
        answer = await stack.client.get(read)
        assert answer.status_code == 200, (read, answer.text)
        shown = strict_loads(answer.content)
        one = shown["jobs"][0] if "jobs" in shown else shown
        assert one["metadata"] == expected and one["provider_result"] is None
    cancelled = await stack.client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    deadline = time.monotonic() + 15
    while not hook.hooks:
        assert time.monotonic() < deadline, "the subscriber never got the job.cancelled delivery"
        await asyncio.sleep(0.02)
    delivered = strict_loads(hook.hooks[0].body)
    assert delivered["type"] == "job.cancelled" and delivered["data"]["job"]["metadata"] == expected
    async with open_stream(stack, last_event_id="0") as lines:
        data = (await read_until(lines, "data: "))[-1].removeprefix("data: ")
    assert strict_loads(data)["data"]["job"]["metadata"] == expected


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
