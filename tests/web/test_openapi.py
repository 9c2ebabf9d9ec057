"""The OpenAPI document: valid OpenAPI 3.1, complete against the app's routes, and true of a live server."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
from typing import Any

import httpx
import hypothesis
import jsonschema_rs
import pytest
import requests
import schemathesis
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from receiver.app import OPERATIONS, create_app
from receiver.dashboard import dashboard_routes
from receiver.images.blobs import store_image
from receiver.ingest.signatures import job_token
from receiver.storage import images
from receiver.web.openapi import build_document
from tests.helpers.database import count_rows
from tests.helpers.images import SMALL_PNG_URI
from tests.helpers.stack import Stack, StackFactory

TOKEN = "openapi-test-token"
DOCUMENT = build_document(OPERATIONS, public_url="http://127.0.0.1", max_body_bytes=1024)
OPERATIONS = [
    (method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item if method != "parameters"
]
# Starlette adds HEAD to every GET route by itself; the document leaves those implicit.
IMPLICIT_METHODS = {"HEAD"}
# Per operation: examples for each generation mode. Enough to reach every branch we know of; the whole
# fuzz run stays well under a minute on loopback.
MAX_EXAMPLES = 25
# No operation is left out. Every one is fuzzed as documented (ids and the webhook token mostly wrong, so
# mostly 404/403), again with real ids where it takes one, and the webhooks again with a real job and its
# token so generated headers and bodies reach signature verification. Fixed values, and why (everything
# else is generated):
FIXED_QUERY = {
    # `/v1/stream` streams until the client leaves; `limit_s` (documented) makes the server end it.
    "GET /v1/stream": {"limit_s": "0.05"},
}


@schemathesis.check
def error_shape(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Every 4xx body is exactly `{"error": {"code": str, "message": str}}`, as JSON."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type == "application/json", f"{response.status_code} with content-type {content_type!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, body
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str) and error["message"], body
    return True


CHECKS = [
    not_a_server_error,
    error_shape,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def sample_path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "sample", template)


def documented(route: Route, method: str) -> bool:
    return any(
        route.path_regex.match(sample_path(path)) and method.lower() in item for path, item in DOCUMENT["paths"].items()
    )


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    """A live server with a bearer token (so the security scheme is exercised) and no background workers."""
    stack = await make_stack(workers=False, api_token=SecretStr(TOKEN))
    stack.client.headers["Authorization"] = f"Bearer {TOKEN}"
    return stack


async def test_the_document_is_valid_openapi_3_1(stack: Stack) -> None:
    """`GET /openapi.json` serves, without a token, a document schemathesis accepts, with valid JSON Schemas."""
    async with httpx.AsyncClient(base_url=stack.url) as anonymous:
        response = await anonymous.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["openapi"] == "3.1.0" and document["servers"] == [{"url": stack.url}]
    schemathesis.openapi.from_dict(document).validate()
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name


async def test_every_route_is_documented(stack: Stack) -> None:
    """Each method of each app route has an operation, and each operation is served by a route; the dashboard's
    HTML pages (`include_in_schema=False`) are no API operations."""
    routes = create_app(stack.services).routes
    assert all(isinstance(route, Route) for route in routes), "a Mount or other route: document it, then adapt this"
    api_routes = [route for route in routes if isinstance(route, Route) and route.include_in_schema]
    hidden = {route.path for route in routes if isinstance(route, Route) and not route.include_in_schema}
    assert hidden == {route.path for route in dashboard_routes() if isinstance(route, Route)}
    served = [(route, method) for route in api_routes for method in route.methods or ()]
    missing = [
        f"{method} {route.path}"
        for route, method in served
        if method not in IMPLICIT_METHODS and not documented(route, method)
    ]
    assert missing == []
    phantom = [
        f"{method} {path}"
        for method, path in OPERATIONS
        if not any(
            route.path_regex.match(sample_path(path)) and method == served_method for route, served_method in served
        )
    ]
    assert phantom == []


async def test_webhook_paths_are_the_providers_with_webhooks(stack: Stack) -> None:
    """`/webhooks/{provider}/…` is documented for exactly the providers that take webhooks."""
    documented_providers = {path.split("/")[2] for path in DOCUMENT["paths"] if path.startswith("/webhooks/")}
    assert documented_providers == {name for name, provider in stack.services.providers.items() if provider.webhooks}


async def test_every_4xx_is_documented_with_the_error_shape() -> None:
    """Every documented 4xx (and 5xx) answer of every operation is the one error shape."""
    for method, path in OPERATIONS:
        for status, response in DOCUMENT["paths"][path][method.lower()]["responses"].items():
            if status[0] in "45":
                assert response == {"$ref": f"#/components/responses/E{status}"}, f"{method} {path} {status}"
    for name, response in DOCUMENT["components"]["responses"].items():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, name


def fuzz(
    stack: Stack, label: str, *, path_parameters: dict[str, str] | None = None, query: dict[str, str] | None = None
) -> None:
    """Positive and negative cases for one operation against the live server, every response checked."""
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json", timeout=10)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    fixed = {"path_parameters": path_parameters, "query": {**FIXED_QUERY.get(label, {}), **(query or {})} or None}
    method, path = label.split(" ", 1)
    documented_op = DOCUMENT["paths"][path][method.lower()]
    # Negative cases break a parameter, the body or the credentials: without any of those there is nothing to break.
    given = {**(path_parameters or {}), **(fixed["query"] or {})}
    free = [p for p in documented_op.get("parameters", []) if p["name"] not in given]
    negatable = bool(free) or "requestBody" in documented_op or documented_op.get("security") != []
    operation = schema[path][method]
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if negatable else (GenerationMode.POSITIVE,):

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode, **fixed))
        @hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            database=None,
            # Speed heuristics about generating cases (big bodies, patterned strings), not about the server.
            suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.filter_too_much],
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=stack.url, session=session, checks=CHECKS, timeout=10)

        run()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
async def test_live_server_keeps_the_document(stack: Stack, method: str, path: str) -> None:
    """Generated requests, valid and invalid, never get a 5xx, and every answer is as documented."""
    await asyncio.to_thread(fuzz, stack, f"{method} {path}")


async def real_ids(stack: Stack) -> dict[str, str]:
    """Path parameters naming real things: a job, a webhook subscription (to our own loopback server), the
    input image the WaveSpeed job serves, and a stored image."""
    job = await stack.create_job()
    wavespeed = await stack.create("wavespeed", "wavespeed-ai/step1x-edit", {"prompt": "red", "image": SMALL_PNG_URI})
    key = wavespeed["input"]["image"].rsplit("/", 1)[1]
    body = {"kind": "webhook", "url": f"{stack.url}/healthz"}
    subscription = (await stack.client.post("/v1/subscriptions", json=body)).json()
    stored = await store_image(stack.services.blobs, base64.b64decode(SMALL_PNG_URI.split(",")[1]), max_pixels=100)
    facts = dataclasses.asdict(stored)
    await stack.services.db.write(lambda tx: images.upsert_image(tx, **facts, now=0.0))
    return {"job_id": job["id"], "sub_id": subscription["id"], "key": key, "sha256": stored.sha256}


BOUND = [
    (method, path)
    for method, path in OPERATIONS
    if re.search(r"\{(job_id|sub_id|key|sha256)\}", path) and not path.startswith("/webhooks/")
]


@pytest.mark.parametrize(("method", "path"), BOUND, ids=[f"{m} {p}" for m, p in BOUND])
async def test_live_server_keeps_the_document_for_real_ids(stack: Stack, method: str, path: str) -> None:
    """With path parameters naming real objects, generated requests reach the success answers, as documented."""
    ids = await real_ids(stack)
    names = re.findall(r"\{([^}]+)\}", path)
    await asyncio.to_thread(fuzz, stack, f"{method} {path}", path_parameters={name: ids[name] for name in names})


@pytest.mark.parametrize("provider", ["fal", "wavespeed"], ids=["fal", "wavespeed"])
async def test_webhooks_with_a_real_job_and_token_refuse_bad_signatures(stack: Stack, provider: str) -> None:
    """With a real job id and its token, generated headers and bodies reach verification and get 4xx in shape."""
    model, image_field = (
        ("fal-ai/stepx-edit2", "image_url") if provider == "fal" else ("wavespeed-ai/step1x-edit", "image")
    )
    job = await stack.create(provider, model, {"prompt": "make it red", image_field: SMALL_PNG_URI})
    token = job_token(b"test-secret", provider, job["id"])
    label = f"POST /webhooks/{provider}/{{job_id}}"
    await asyncio.to_thread(fuzz, stack, label, path_parameters={"job_id": job["id"]}, query={"token": token})
    assert await count_rows(stack.services.db.path, "inbox") == 0
    assert (await stack.job(job["id"]))["status"] == "pending"


async def test_edge_refusals_are_documented_where_they_happen(stack: Stack) -> None:
    """What the edge answers before any route runs is in the document for every route it happens on: 400
    `bad_host` everywhere, 403 `cross_site_request` on state-changing methods, 415 on JSON bodies, and 503
    `busy` (large bodies wait for one shared slot) on every `/v1` body."""
    descriptions = DOCUMENT["components"]["responses"]
    for status, code in (("400", "bad_host"), ("403", "cross_site_request"), ("415", "application/json")):
        assert code in descriptions[f"E{status}"]["description"], status
    assert "`busy`" in descriptions["E503"]["description"]
    for method, path in OPERATIONS:
        operation = DOCUMENT["paths"][path][method.lower()]
        documented_statuses = set(operation["responses"])
        url = sample_path(path)
        answer = await stack.client.request(method, url, headers={"Host": "rebound.example"})
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, "bad_host"), f"{method} {path}"
        assert "400" in documented_statuses, f"{method} {path}"
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            answer = await stack.client.request(method, url, headers={"Origin": "https://attacker.example"})
            assert answer.status_code == 403 and "403" in documented_statuses, f"{method} {path}"
        if "requestBody" in operation and path.startswith("/v1/"):
            answer = await stack.client.request(method, url, content=b"{}", headers={"Content-Type": "text/plain"})
            assert answer.status_code == 415 and "415" in documented_statuses, f"{method} {path}"
            assert "503" in documented_statuses, f"{method} {path}"
