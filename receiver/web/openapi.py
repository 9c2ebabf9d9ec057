"""The OpenAPI 3.1 document of the HTTP API, made from the route table (`receiver.web.operations`) and the
body models (`receiver.web.schemas`, through pydantic's JSON Schema)."""

from __future__ import annotations

import copy
import importlib.metadata
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from receiver.web.operations import TEXT, Operation, Param, Reply
from receiver.web.schemas import CreateJob, Error

REF = "#/components/schemas/{model}"
ERRORS = {
    400: "Bad request: on every route `bad_host` (the `Host` header names none of this server's addresses; "
    "`RECEIVER_ALLOWED_HOSTS` adds names); `invalid_idempotency_key`; webhooks: `missing_header`, "
    "`bad_timestamp`, `malformed_body`, `request_id_mismatch`.",
    401: "Missing or wrong bearer token (`unauthorized`); webhooks: the signature does not verify.",
    403: "Forbidden: on every state-changing route `cross_site_request` (its `Origin` or `Sec-Fetch-Site` "
    "says another site sent it); webhooks: `bad_token`, `foreign_user`.",
    404: "No such resource (`not_found`).",
    409: "The request contradicts the current state (`already_final`, `idempotency_key_reused`).",
    413: "The body is larger than `RECEIVER_MAX_BODY_BYTES`, or under `/v1` than `RECEIVER_MAX_JSON_BYTES` "
    "(`payload_too_large`).",
    415: "The body's `Content-Type` is missing or not `application/json` (`unsupported_media_type`).",
    422: "Invalid input (`invalid_input`, `malformed_json`); the message names the field.",
    503: "Try again later (`provider_not_configured`, `verification_unavailable`, `too_many_streams`, "
    "`secret_unreadable`: a subscription's stored credentials do not open with the configured keys; `busy`: "
    "other large request bodies are being taken, one at a time), with `Retry-After` when the wait is known.",
}
# What the edge answers before any route runs (see `receiver.web.hygiene`): 400 `bad_host` everywhere, 403
# `cross_site_request` on state-changing methods.
EDGE_ERRORS = {"get": (400,), "post": (400, 403), "put": (400, 403), "patch": (400, 403), "delete": (400, 403)}
# Components no operation names as its body: the error shape (of every error answer), and the fields every
# `POST /v1/jobs` variant shares.
EXTRA_MODELS: tuple[type[BaseModel], ...] = (Error, CreateJob)


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def reply_object(reply: Reply) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": reply.description}
    if reply.body is not None:
        answer["content"] = json_content(ref(reply.body))
    elif reply.media is not None:
        answer["content"] = copy.deepcopy(dict(reply.media))
    if reply.headers:
        answer["headers"] = {
            h.name: {"description": h.description, "schema": copy.deepcopy(dict(h.schema))} for h in reply.headers
        }
    return answer


def param_object(param: Param) -> dict[str, Any]:
    required = param.required or param.where == "path"
    return {
        "in": param.where,
        "name": param.name,
        "required": required,
        "schema": copy.deepcopy(dict(param.schema)),
        "description": param.description,
    }


def operation_object(operation: Operation) -> dict[str, Any]:
    method = operation.method.lower()
    statuses = {*operation.errors, *EDGE_ERRORS[method], *(() if operation.public else (401,))}
    responses = {str(reply.status): reply_object(reply) for reply in (operation.ok, *operation.more)}
    responses |= {str(status): {"$ref": f"#/components/responses/E{status}"} for status in statuses}
    described: dict[str, Any] = {
        "summary": operation.summary,
        "tags": [operation.tag],
        "responses": dict(sorted(responses.items())),
    }
    if operation.description:
        described["description"] = operation.description
    if operation.params:
        described["parameters"] = [param_object(param) for param in operation.params]
    if operation.body is not None:
        content = json_content(ref(operation.body))
        if operation.example is not None:
            content["application/json"]["example"] = copy.deepcopy(dict(operation.example))
        described["requestBody"] = {"required": True, "content": content}
    if operation.public:
        described["security"] = []
    return described


def paths(operations: Iterable[Operation]) -> dict[str, Any]:
    documented: dict[str, Any] = {}
    for operation in operations:
        documented.setdefault(operation.path, {})[operation.method.lower()] = operation_object(operation)
    return documented


def component_schemas(operations: Sequence[Operation]) -> dict[str, Any]:
    """The JSON Schema of every body the operations take or answer, and of every model those refer to."""
    bodies = [op.body for op in operations] + [reply.body for op in operations for reply in (op.ok, *op.more)]
    models = list(dict.fromkeys([*(body for body in bodies if body is not None), *EXTRA_MODELS]))
    _, top = models_json_schema([(model, "validation") for model in models], ref_template=REF)
    schemas: dict[str, Any] = top["$defs"]
    return dict(sorted(schemas.items()))


def build_document(operations: Sequence[Operation], *, public_url: str, max_body_bytes: int) -> dict[str, Any]:
    """The whole document; `public_url` is its server, `max_body_bytes` the body cap it states."""
    try:
        version = importlib.metadata.version("receiver")
    except importlib.metadata.PackageNotFoundError:
        version = "0.0.0"
    descriptions = {**ERRORS, 413: f"{ERRORS[413]} Here: {max_body_bytes} bytes."}
    responses = {
        f"E{status}": {"description": description, "content": json_content(ref(Error))}
        for status, description in descriptions.items()
    }
    responses["E401"]["headers"] = {
        "WWW-Authenticate": {"description": "`Bearer` (bearer-token refusals).", "schema": dict(TEXT)}
    }
    responses["E503"]["headers"] = {
        "Retry-After": {"description": "Seconds, when the wait is known.", "schema": dict(TEXT)}
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "receiver",
            "version": version,
            "description": "Submits image edits to hosted providers, receives their webhooks, stores the results "
            'and fans them out. Every error has one shape: `{"error": {"code": "...", "message": "..."}}`.',
        },
        "servers": [{"url": public_url}],
        "security": [{"bearerAuth": []}],
        "paths": paths(operations),
        "components": {
            "schemas": component_schemas(operations),
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`RECEIVER_API_TOKEN`. Without one configured `/v1` is open (loopback only).",
                }
            },
        },
    }
