"""The `/v1/jobs` API over real HTTP: create, validate, show, list, cancel, auth and the one error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.helpers.database import read_rows
from tests.helpers.http import assert_error_shape
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.stack import Stack, StackFactory, open_clocked_stack

STEPX = "fal-ai/stepx-edit2"
SDXL = "fal-ai/fast-sdxl/image-to-image"
TOKEN = "api-token-for-tests"
JOB_FIELDS = {
    "id",
    "provider",
    "model",
    "status",
    "provider_request_id",
    "input",
    "result",
    "error",
    "created_at",
    "submitted_at",
    "completed_at",
}


def job_body(model: str = STEPX, **input_fields: Any) -> dict[str, Any]:
    return {
        "provider": "fal",
        "model": model,
        "input": {"prompt": "make it red", "image_url": SMALL_PNG_URI, **input_fields},
    }


def without(body: dict[str, Any], *path: str) -> dict[str, Any]:
    """`body` with the key at `path` (e.g. "input", "prompt") removed."""
    copy = {**body, "input": dict(body["input"])}
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return copy


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack(workers=False)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One stack for the whole module, for requests that are refused before anything is stored."""
    async with open_clocked_stack(tmp_path_factory.mktemp("shared")) as stack:
        yield stack


in_shared_loop = pytest.mark.asyncio(loop_scope="module")


async def test_create_job_is_accepted_with_location(stack: Stack) -> None:
    """POST /v1/jobs answers 202 with the pending job and a Location header that serves it."""
    response = await stack.client.post("/v1/jobs", json=job_body() | {"metadata": {"user": "u1", "n": 3}})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["id"].startswith("job_")
    assert job["status"] == "pending"
    assert job["metadata"] == {"user": "u1", "n": 3}
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (await stack.client.get(response.headers["location"])).json() == job


async def test_job_has_the_documented_fields(stack: Stack) -> None:
    """GET /v1/jobs/{id} shows the job with every documented field, the input as given and nothing secret."""
    created = await stack.create_job(SDXL, seed=5, num_images=2)
    response = await stack.client.get(f"/v1/jobs/{created['id']}")
    assert response.status_code == 200
    job = response.json()
    assert JOB_FIELDS <= set(job)
    assert job["provider"] == "fal" and job["model"] == SDXL
    assert job["input"] == {"prompt": "make it red", "image_url": SMALL_PNG_URI, "seed": 5, "num_images": 2}
    assert job["result"] is None and job["error"] is None and job["provider_request_id"] is None
    assert job["created_at"].endswith("+00:00")
    assert job["submitted_at"] is None and job["completed_at"] is None
    assert "test-fal-key" not in response.text and "token" not in response.text


async def test_unknown_job_is_404(stack: Stack) -> None:
    """A job id that does not exist answers 404 not_found, for GET and for cancel."""
    error = assert_error_shape(await stack.client.get("/v1/jobs/job_NOPE"), 404, "not_found")
    assert "job_NOPE" in error["message"]
    assert_error_shape(await stack.client.post("/v1/jobs/job_NOPE/cancel"), 404, "not_found")


VALID = job_body()
SDXL_VALID = job_body(SDXL)


@in_shared_loop
@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(without(VALID, "input", "prompt"), "input.prompt", id="missing-prompt"),
        pytest.param(without(VALID, "input", "image_url"), "input.image_url", id="missing-image-url"),
        pytest.param(job_body(prompt=""), "input.prompt", id="empty-prompt"),
        pytest.param(job_body(prompt=123), "input.prompt", id="prompt-not-string"),
        pytest.param(job_body(image_url="ftp://example.com/cat.png"), "input.image_url", id="ftp-image-url"),
        pytest.param(job_body(image_url="data:text/plain;base64,aGVsbG8="), "input.image_url", id="data-uri-not-image"),
        pytest.param(job_body(image_url="data:image/png,not-base64"), "input.image_url", id="data-uri-not-base64"),
        pytest.param(job_body(image_url="cat.png"), "input.image_url", id="relative-image-url"),
        pytest.param(job_body(guidance_scale=20.5), "input.guidance_scale", id="guidance-too-high"),
        pytest.param(job_body(guidance_scale=-1), "input.guidance_scale", id="guidance-negative"),
        pytest.param(job_body(guidance_scale="high"), "input.guidance_scale", id="guidance-not-number"),
        pytest.param(job_body(num_inference_steps="many"), "input.num_inference_steps", id="steps-not-int"),
        pytest.param(job_body(seed=-1), "input.seed", id="negative-seed"),
        pytest.param(job_body(SDXL, num_images=0), "input.num_images", id="zero-images"),
        pytest.param(job_body(SDXL, num_images=9), "input.num_images", id="too-many-images"),
        pytest.param(job_body(SDXL, strength=0), "input.strength", id="strength-zero"),
        pytest.param(job_body(output_format="gif"), "input.output_format", id="bad-output-format"),
        pytest.param(job_body(SDXL, image_size="huge"), "input.image_size", id="bad-image-size"),
        pytest.param(
            job_body(SDXL, image_size={"width": 10, "height": 512}), "input.image_size", id="image-size-too-small"
        ),
        pytest.param(job_body(SDXL, loras=[{"path": "", "scale": 1}]), "input.loras.0.path", id="lora-without-path"),
        pytest.param(job_body(colour="red"), "input.colour", id="unknown-input-field"),
        # num_images is a field of fast-sdxl, unknown to stepx-edit2
        pytest.param(job_body(num_images=2), "input.num_images", id="field-of-another-model"),
        pytest.param(SDXL_VALID | {"input": "make it red"}, "input", id="input-not-object"),
        pytest.param(without(VALID, "input"), "input", id="missing-input"),
        pytest.param(VALID | {"provider": "midjourney"}, "provider", id="unknown-provider"),
        pytest.param(VALID | {"provider": 7}, "provider", id="provider-not-string"),
        pytest.param({k: v for k, v in VALID.items() if k != "provider"}, "provider", id="missing-provider"),
        pytest.param(VALID | {"model": "fal-ai/flux/dev"}, "model", id="unsupported-fal-model"),
        pytest.param(VALID | {"model": ["fal-ai/stepx-edit2"]}, "model", id="model-not-string"),
        pytest.param(VALID | {"callback_url": "ftp://example.com/hook"}, "callback_url", id="callback-url-scheme"),
        pytest.param(VALID | {"metadata": {"tags": ["a", "b"]}}, "metadata.tags", id="metadata-nested"),
        pytest.param(VALID | {"metadata": "not-an-object"}, "metadata", id="metadata-not-object"),
        pytest.param(VALID | {"priority": "high"}, "priority", id="unknown-top-level-field"),
        pytest.param([VALID], "body", id="body-is-a-list"),
        pytest.param("a string", "body", id="body-is-a-string"),
    ],
)
async def test_invalid_job_is_422_naming_the_field(shared: Stack, body: Any, field: str) -> None:
    """An invalid job body answers 422 invalid_input with a message naming the bad field; nothing is stored."""
    error = assert_error_shape(await shared.client.post("/v1/jobs", json=body), 422, "invalid_input")
    assert error["message"].startswith(f"{field}") or f"; {field}" in error["message"], error["message"]
    assert await read_rows(shared.services.db.path, "SELECT id FROM jobs") == []
    assert await read_rows(shared.services.db.path, "SELECT id FROM tasks") == []


@in_shared_loop
@pytest.mark.parametrize(
    "content",
    [
        b'{"provider": "fal",',
        b"",
        b"\xff\xfe{}",
        b"NaN",
        b'{"provider": "fal", "model": "fal-ai/stepx-edit2", "input": {}, "metadata": {"x": Infinity}}',
    ],
    ids=["truncated", "empty", "not-utf8", "bare-nan", "infinity-in-metadata"],
)
async def test_malformed_json_is_422(shared: Stack, content: bytes) -> None:
    """A body that is not strict JSON answers 422 malformed_json (never a 500)."""
    response = await shared.client.post("/v1/jobs", content=content, headers={"Content-Type": "application/json"})
    assert_error_shape(response, 422, "malformed_json")


async def test_non_finite_metadata_never_makes_a_job_unreadable(stack: Stack) -> None:
    """NaN in a body is refused up front, so no stored job fails to serialise on GET."""
    body = b'{"provider":"fal","model":"fal-ai/stepx-edit2","input":{"prompt":"p","image_url":"http://x/a.png"},'
    response = await stack.client.post(
        "/v1/jobs", content=body + b'"metadata":{"x":NaN}}', headers={"Content-Type": "application/json"}
    )
    assert_error_shape(response, 422, "malformed_json")
    assert (await stack.client.get("/v1/jobs")).json()["jobs"] == []


@in_shared_loop
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
    ids=["text", "form", "multipart"],
)
async def test_wrong_content_type_is_415(shared: Stack, content_type: str) -> None:
    """A body that is not declared as JSON answers 415 unsupported_media_type."""
    response = await shared.client.post("/v1/jobs", content=b"{}", headers={"Content-Type": content_type})
    assert_error_shape(response, 415, "unsupported_media_type")


async def chunks(data: bytes, size: int = 256) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_body_over_the_cap_is_413(make_stack: StackFactory, declared: bool) -> None:
    """A body over `max_body_bytes` answers 413, whether its length is declared or it is streamed."""
    stack = await make_stack(workers=False, max_body_bytes=1024)
    small = await stack.client.post("/v1/jobs", json=job_body())
    assert small.status_code == 202
    big = httpx.Response(200, json=job_body(negative_prompt="x" * 2000)).content
    content: bytes | AsyncIterator[bytes] = big if declared else chunks(big)
    response = await stack.client.post("/v1/jobs", content=content, headers={"Content-Type": "application/json"})
    assert_error_shape(response, 413, "payload_too_large")
    assert len(await read_rows(stack.services.db.path, "SELECT id FROM jobs")) == 1


async def test_list_filters_by_status_and_pages_newest_first(stack: Stack) -> None:
    """GET /v1/jobs pages newest first with a cursor, without duplicates, and filters by status."""
    created = [(await stack.create_job(prompt=f"edit {n}"))["id"] for n in range(5)]
    for job_id in created[1:3]:
        assert (await stack.client.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202

    pages, cursor = [], None
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        response = await stack.client.get("/v1/jobs", params=params)
        assert response.status_code == 200
        page = response.json()
        pages.append([job["id"] for job in page["jobs"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == pages[-1][-1]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [job_id for page in pages for job_id in page] == created[::-1]

    cancelled = (await stack.client.get("/v1/jobs", params={"status": "cancelled"})).json()
    assert [job["id"] for job in cancelled["jobs"]] == [created[2], created[1]]
    assert cancelled["next_cursor"] is None
    pending = (await stack.client.get("/v1/jobs", params={"status": "pending", "limit": "2"})).json()
    assert [job["id"] for job in pending["jobs"]] == [created[4], created[3]]
    rest = (await stack.client.get("/v1/jobs", params={"status": "pending", "cursor": pending["next_cursor"]})).json()
    assert [job["id"] for job in rest["jobs"]] == [created[0]]
    assert rest["next_cursor"] is None
    assert (await stack.client.get("/v1/jobs", params={"status": "failed"})).json() == {"jobs": [], "next_cursor": None}


@in_shared_loop
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "two"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"limit": "\u00b2"}, "limit"),
        ({"limit": "9" * 5000}, "limit"),
        ({"status": "done"}, "status"),
        ({"status": "PENDING"}, "status"),
    ],
    ids=[
        "limit-zero",
        "limit-over-max",
        "limit-negative",
        "limit-word",
        "limit-fraction",
        "limit-empty",
        "limit-superscript-digit",
        "limit-huge",
        "status-unknown",
        "status-wrong-case",
    ],
)
async def test_bad_list_parameters_are_422(shared: Stack, params: dict[str, str], field: str) -> None:
    """A bad `limit` or `status` on GET /v1/jobs answers 422 naming the parameter."""
    error = assert_error_shape(await shared.client.get("/v1/jobs", params=params), 422, "invalid_input")
    assert error["message"].startswith(f"{field}:")


async def test_bearer_token_guards_the_api_only(make_stack: StackFactory) -> None:
    """With `api_token` set, /v1 needs the bearer token; /healthz and the webhook route stay open."""
    stack = await make_stack(workers=False, api_token=TOKEN)
    for headers in [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ]:
        for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/job_X")]:
            response = await stack.client.request(method, path, headers=headers, json=job_body())
            assert_error_shape(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in response.text
    assert await read_rows(stack.services.db.path, "SELECT id FROM jobs") == []
    assert (await stack.client.get("/healthz")).json() == {"status": "ok"}
    # The webhook route does its own checks (token, signature): a bad one is refused, but not for a bearer token.
    webhook = await stack.client.post("/webhooks/fal/job_X?token=nope", content=b"{}")
    assert webhook.status_code == 403
    assert assert_error_shape(webhook, 403)["code"] == "bad_token"

    stack.client.headers["Authorization"] = f"Bearer {TOKEN}"
    job = await stack.create_job()
    assert (await stack.client.get(f"/v1/jobs/{job['id']}")).status_code == 200
    assert (await stack.client.get("/v1/jobs")).status_code == 200
    accepted = await stack.client.post(stack.webhook_path(job["id"]), content=b"{}")
    assert accepted.status_code == 400  # past our token check, refused by fal's signature check
    assert assert_error_shape(accepted, 400)["code"] == "missing_header"


async def test_every_api_error_has_one_shape(make_stack: StackFactory) -> None:
    """Every failing request answers exactly `{"error": {"code": str, "message": str}}`."""
    stack = await make_stack(workers=False, api_token=TOKEN, max_body_bytes=2048)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    stack.client.headers.update(auth)
    final = await stack.create_job()
    await stack.client.post(f"/v1/jobs/{final['id']}/cancel")
    assert (await stack.client.post("/v1/jobs", json=job_body(), headers={"Idempotency-Key": "k1"})).status_code == 202
    json_headers = {"Content-Type": "application/json"}
    reused_key = {"json": job_body(seed=2), "headers": {"Idempotency-Key": "k1"}}
    failing: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("GET", "/nope", {}, 404, "not_found"),
        ("GET", "/v1/nope", {}, 404, "not_found"),
        ("DELETE", "/v1/jobs", {}, 405, "method_not_allowed"),
        ("PUT", f"/v1/jobs/{final['id']}", {"json": {}}, 405, "method_not_allowed"),
        ("GET", "/webhooks/fal/job_X", {}, 405, "method_not_allowed"),
        ("POST", "/v1/jobs", {"json": {"provider": "fal"}}, 422, "invalid_input"),
        ("POST", "/v1/jobs", {"content": b"{", "headers": json_headers}, 422, "malformed_json"),
        ("GET", "/v1/jobs?limit=x", {}, 422, "invalid_input"),
        ("GET", "/v1/jobs", {"headers": {"Authorization": "Bearer nope"}}, 401, "unauthorized"),
        ("POST", "/v1/jobs", {"content": b"{" + b" " * 4096 + b"}", "headers": json_headers}, 413, "payload_too_large"),
        (
            "POST",
            "/v1/jobs",
            {"content": b"a=b", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ("GET", "/v1/jobs/job_UNKNOWN", {}, 404, "not_found"),
        ("POST", f"/v1/jobs/{final['id']}/cancel", {}, 409, "already_final"),
        ("POST", "/v1/jobs", {"json": job_body(), "headers": {"Idempotency-Key": ""}}, 400, "invalid_idempotency_key"),
        ("POST", "/v1/jobs", reused_key, 409, "idempotency_key_reused"),
        ("POST", "/webhooks/nope/job_X?token=t", {}, 404, "not_found"),
    ]
    for method, path, kwargs, status, code in failing:
        response = await stack.client.request(method, path, **kwargs)
        assert_error_shape(response, status, code)


async def test_cancel_pending_job_stops_its_submit(stack: Stack) -> None:
    """Cancelling a pending job answers 202 cancelled, and its submit task then never calls fal."""
    job = await stack.create_job()
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["code"] == "cancelled"
    assert cancelled["completed_at"] is not None
    # The submit task runs, sees the cancel and does nothing; the other task is the job.cancelled notification.
    assert await stack.services.runner.run_once() == 2
    assert await stack.services.runner.run_once() == 0
    assert stack.emulator.requests == {}
    assert await stack.job(job["id"]) == cancelled
    tasks = await read_rows(stack.services.db.path, "SELECT kind, status FROM tasks")
    assert [tuple(row) for row in tasks] == [("submit", "done"), ("notify", "done")]


async def test_cancel_of_a_final_job_is_409(stack: Stack) -> None:
    """A job that is already final cannot be cancelled: 409 already_final, and the job does not change."""
    job = await stack.create_job()
    first = (await stack.client.post(f"/v1/jobs/{job['id']}/cancel")).json()
    error = assert_error_shape(await stack.client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "already_final")
    assert "cancelled" in error["message"]
    assert await stack.job(job["id"]) == first


async def test_server_without_fal_key_refuses_fal_jobs_with_503(make_stack: StackFactory) -> None:
    """Without FAL_KEY a valid fal job answers 503 provider_not_configured and nothing is stored."""
    stack = await make_stack(workers=False, fal_key=None)
    response = await stack.client.post("/v1/jobs", json=job_body())
    error = assert_error_shape(response, 503, "provider_not_configured")
    assert "fal" in error["message"]
    assert await read_rows(stack.services.db.path, "SELECT id FROM jobs") == []
    invalid = await stack.client.post("/v1/jobs", json=without(job_body(), "input", "prompt"))
    assert_error_shape(invalid, 422, "invalid_input")
