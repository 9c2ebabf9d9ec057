"""The OpenAPI 3.1 document of the HTTP API: every route, as the handlers and error handlers answer it."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from receiver.models import JobStatus
from receiver.web.openapi_schemas import component_schemas, ref
from receiver.web.routes.pipeline import DELIVERY_STATUSES

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
    503: "Try again later (`provider_not_configured`, `verification_unavailable`, `too_many_streams`; `busy`: "
    "other large request bodies are being taken, one at a time), with `Retry-After`.",
}
STATE_CHANGING = ("post", "put", "patch", "delete")
TEXT = {"type": "string"}
IDEMPOTENCY_KEY = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"}
EVENT_ID = {"type": "string", "pattern": "^[0-9]{1,18}$"}
INPUT_KEY = {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"}  # secrets.token_urlsafe(32)
BODY_ERRORS = (413, 415, 422, 503)  # 503 `busy`: a large body waits for the one slot large bodies share
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
JOB_EXAMPLE = {
    "provider": "fal",
    "model": "fal-ai/stepx-edit2",
    "input": {"prompt": "make the head band red", "image_url": "https://example.com/photo.png"},
    "metadata": {"user": "u_123"},
}

IDEMPOTENCY_NOTE = (
    "Makes the request safe to retry: 1-255 printable ASCII characters (a UUID), bare or as a quoted "
    "structured-field string. Kept at least 24 h; scoped to this operation, not to the bearer token."
)
REPLAYED = {
    "description": "A retry: the key was already used with this same body; the job it created, as it is now.",
    "content": {"application/json": {"schema": ref("JobDetail")}},
    "headers": {
        "Idempotent-Replayed": {"description": "`true`.", "schema": {"const": "true"}},
        "Location": {"description": "`/v1/jobs/{id}` of that job.", "schema": TEXT},
    },
}


def param(where: str, name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> dict[str, Any]:
    required = required or where == "path"
    return {"in": where, "name": name, "required": required, "schema": schema, "description": description}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def op(
    summary: str,
    tag: str,
    ok: tuple[int, str | dict[str, Any] | None, str],
    *,
    errors: tuple[int, ...] = (),
    params: list[dict[str, Any]] | None = None,
    body: str | dict[str, Any] | None = None,
    public: bool = False,
    description: str | None = None,
    example: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    more: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One operation. `ok` is (status, component name or content map or None, description), `headers` its
    headers, `more` other non-error answers; operations that are not `public` take the token and answer 401."""
    status, content, ok_description = ok
    success: dict[str, Any] = {"description": ok_description}
    if content is not None:
        success["content"] = json_content(ref(content)) if isinstance(content, str) else content
    if headers:
        success["headers"] = {name: {"description": text, "schema": TEXT} for name, text in headers.items()}
    statuses = sorted({*errors, *(() if public else (401,))})
    responses = {str(status): success, **(more or {})}
    responses |= {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if description:
        operation["description"] = description
    if params:
        operation["parameters"] = params
    if body is not None:
        schema = ref(body) if isinstance(body, str) else body
        operation["requestBody"] = {"required": True, "content": json_content(schema)}
        if example is not None:
            operation["requestBody"]["content"]["application/json"]["example"] = example
    if public:
        operation["security"] = []
    return operation


def webhook(provider: str, headers: list[tuple[str, dict[str, Any], str]], body: str, note: str = "") -> dict[str, Any]:
    """A provider's completion webhook: the per-job token in the URL, signed headers over the raw body."""
    signed = [param("header", name, schema, description, required=True) for name, schema, description in headers]
    return op(
        f"{provider} completions",
        "webhooks",
        (200, "WebhookAnswer", "Recorded (`applied`, `recorded`), a `duplicate`, or not final (`ignored`)."),
        errors=(400, 401, 403, 404, 413, 503),
        params=[
            param("path", "job_id", TEXT, "Our job id, from the webhook URL we gave the provider."),
            param("query", "token", TEXT, "The per-job token from that URL.", required=True),
            *signed,
        ],
        body=body,
        public=True,
        description=f"Verified over the raw bytes before anything is recorded; 2xx only after the commit.{note}",
    )


def with_edge_answers(operations: dict[str, Any]) -> dict[str, Any]:
    """`operations` with what the edge answers before any route runs: 400 `bad_host` everywhere, 403
    `cross_site_request` on state-changing methods (see `receiver.web.hygiene`)."""
    for methods in operations.values():
        for method, operation in methods.items():
            edge = (400, 403) if method in STATE_CHANGING else (400,)
            responses = operation["responses"] | {str(s): {"$ref": f"#/components/responses/E{s}"} for s in edge}
            operation["responses"] = dict(sorted(responses.items()))
    return operations


def paths() -> dict[str, Any]:
    job_id = [param("path", "job_id", TEXT, "A job id (`job_...`).")]
    sub_id = [param("path", "sub_id", TEXT, "A subscription id (`sub_...`).")]
    cursor = param("query", "cursor", TEXT, "`next_cursor` of the previous page.")
    delivery_query = [
        param("query", "job_id", TEXT, "Only deliveries of this job's events."),
        param("query", "subscription_id", TEXT, "Only deliveries to this subscription."),
        param("query", "status", {"enum": list(DELIVERY_STATUSES)}, "Only deliveries in this state."),
        param("query", "since", {"type": "number"}, "Created at or after (Unix seconds)."),
        param("query", "until", {"type": "number"}, "Created before (Unix seconds)."),
        param("query", "limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "Page size."),
        cursor,
    ]
    job_query = [
        param("query", "status", {"enum": [status.value for status in JobStatus]}, "Only jobs in this state."),
        param("query", "provider", TEXT, "Only jobs for this provider."),
        param("query", "limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "Page size."),
        cursor,
    ]
    image_query = [
        param("path", "sha256", {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "The image's SHA-256 (hex)."),
        param("query", "thumbnail", TEXT, "Any non-empty value: the WebP thumbnail, when there is one."),
        param("header", "If-None-Match", TEXT, "The `ETag` of a copy the client holds."),
    ]
    stream_query = [
        param("header", "Last-Event-ID", EVENT_ID, "Resume after this event id (`0`: the whole log; none: from now)."),
        param("query", "last_event_id", EVENT_ID, "The same, for clients that cannot set headers."),
        param("query", "limit_s", {"type": "number", "exclusiveMinimum": 0}, "End the stream after this long."),
    ]
    images = {media: {"schema": {"type": "string", "contentMediaType": media}} for media in IMAGE_TYPES}
    return {
        "/healthz": {"get": op("Liveness (checks the database)", "meta", (200, "Health", "Up."), public=True)},
        "/openapi.json": {
            "get": op("This document", "meta", (200, json_content({"type": "object"}), "OpenAPI 3.1."), public=True)
        },
        "/v1/jobs": {
            "post": op(
                "Create a job",
                "jobs",
                (202, "JobDetail", "Stored, with a task that submits it to the provider."),
                errors=(400, 409, *BODY_ERRORS, 503),
                params=[param("header", "Idempotency-Key", IDEMPOTENCY_KEY, IDEMPOTENCY_NOTE)],
                body="CreateJobRequest",
                example=JOB_EXAMPLE,
                headers={"Location": "`/v1/jobs/{id}` of the new job."},
                more={"200": REPLAYED},
                description="`input` is the provider's own field set; unknown fields are refused for the checked "
                "models. 503 when the provider has no credentials. "
                "With an `Idempotency-Key`, a retry of the same body answers 200 with the job the key created "
                "(never a second job); the same key with another body is 409 `idempotency_key_reused`.",
            ),
            "get": op(
                "List jobs, newest first",
                "jobs",
                (200, "JobPage", "One page."),
                errors=(422,),
                params=job_query,
                description="A data URI longer than 256 characters inside a job's `input` is shown as its head, "
                "an ellipsis and its size (`data:image/png;base64,… (15203344 bytes)`); `GET /v1/jobs/{job_id}` "
                "shows the input whole.",
            ),
        },
        "/v1/jobs/{job_id}": {
            "get": op("Show a job", "jobs", (200, "JobDetail", "The job."), errors=(404,), params=job_id)
        },
        "/v1/jobs/{job_id}/events": {
            "get": op(
                "Provider events recorded for a job",
                "jobs",
                (200, "InboxEvents", "Oldest first."),
                errors=(404,),
                params=job_id,
            )
        },
        "/v1/jobs/{job_id}/cancel": {
            "post": op(
                "Cancel a job",
                "jobs",
                (202, "JobDetail", "Cancelled; the provider is asked to cancel too."),
                errors=(404, 409),
                params=job_id,
            )
        },
        "/v1/images/{sha256}": {
            "get": op(
                "Stored image bytes",
                "images",
                (200, images, "The image, cacheable forever."),
                errors=(404,),
                headers={"ETag": "The image's hash, quoted.", "Cache-Control": "`public, max-age=31536000, immutable`"},
                more={"304": {"description": "`If-None-Match` matches the `ETag`: the copy the client holds is it."}},
                params=image_query,
                public=True,
                description="No bearer token: the hash is the capability (chat services fetch these images).",
            )
        },
        "/v1/subscriptions": {
            "post": op(
                "Create a subscription",
                "subscriptions",
                (201, "CreatedSubscription", "Stored; a webhook's `secret` is shown only now."),
                errors=BODY_ERRORS,
                body="CreateSubscription",
                example={"kind": "webhook", "url": "https://hooks.example.com/receiver", "events": ["job.succeeded"]},
            ),
            "get": op("List subscriptions", "subscriptions", (200, "Subscriptions", "All, with their state.")),
        },
        "/v1/subscriptions/{sub_id}": {
            "delete": op(
                "Stop a subscription (its history stays)",
                "subscriptions",
                (204, None, "Disabled."),
                errors=(404,),
                params=sub_id,
            )
        },
        "/v1/subscriptions/{sub_id}/rotate-secret": {
            "post": op(
                "New signing secret",
                "subscriptions",
                (200, "RotatedSubscription", "The old secret also signs until `previous_valid_until`."),
                errors=(404, 422),
                params=sub_id,
            )
        },
        "/v1/subscriptions/{sub_id}/test": {
            "post": op(
                "Send a test notification now",
                "subscriptions",
                (200, "SentTest", "How the target replied."),
                errors=(404,),
                params=sub_id,
            )
        },
        "/v1/deliveries": {
            "get": op(
                "Deliveries, newest first",
                "deliveries",
                (200, "DeliveryPage", "With their attempt logs."),
                errors=(422,),
                params=delivery_query,
            )
        },
        "/v1/deliveries/replay": {
            "post": op(
                "Send matching deliveries again",
                "deliveries",
                (202, "Requeued", "How many were requeued (pending ones are left alone)."),
                errors=BODY_ERRORS,
                body="ReplayFilter",
                example={"status": "dead", "since": 1767225600},
                description="Give at least one filter.",
            )
        },
        "/v1/deliveries/{delivery_id}/retry": {
            "post": op(
                "Send one delivery again",
                "deliveries",
                (202, "Requeued", "Requeued, same `webhook-id`."),
                errors=(404,),
                params=[param("path", "delivery_id", TEXT, "A delivery id.")],
            )
        },
        "/v1/stream": {
            "get": op(
                "Server-sent events of job events",
                "jobs",
                (200, {"text/event-stream": {"schema": TEXT}}, "`id`/`event`/`data` per event; `: ping` while idle."),
                errors=(422, 503),
                params=stream_query,
            )
        },
        "/v1/callback-secret": {
            "get": op(
                "The secret that signs `callback_url` deliveries",
                "deliveries",
                (200, "CallbackSecret", "A Standard Webhooks `whsec_` secret."),
            )
        },
        "/inputs/{key}": {
            "get": op(
                "An input image we serve to a provider",
                "webhooks",
                (200, images, "The image bytes."),
                errors=(404,),
                params=[param("path", "key", INPUT_KEY, "The unguessable key of a job's input URL.")],
                public=True,
            )
        },
        "/webhooks/fal/{job_id}": {
            "post": webhook(
                "fal",
                [
                    ("X-Fal-Webhook-Request-Id", TEXT, "fal's request id (also in the body)."),
                    ("X-Fal-Webhook-User-Id", TEXT, "The fal user the request ran for."),
                    ("X-Fal-Webhook-Timestamp", EVENT_ID, "Unix seconds, within `RECEIVER_WEBHOOK_TOLERANCE_S`."),
                    (
                        "X-Fal-Webhook-Signature",
                        {"type": "string", "pattern": "^[0-9a-fA-F]{128}$"},
                        "Hex Ed25519 signature by a key of fal's JWKS.",
                    ),
                ],
                "FalWebhook",
            )
        },
        "/webhooks/wavespeed/{job_id}": {
            "post": webhook(
                "wavespeed",
                [
                    ("webhook-id", TEXT, "WaveSpeed's delivery id."),
                    ("webhook-timestamp", EVENT_ID, "Unix seconds, within `RECEIVER_WEBHOOK_TOLERANCE_S`."),
                    (
                        "webhook-signature",
                        {"type": "string", "pattern": "^v3,[0-9a-fA-F]{64}$"},
                        "`v3,<hex HMAC-SHA256>` of `id.timestamp.body` under the `whsec_` secret.",
                    ),
                ],
                "WaveSpeedWebhook",
                " 404 while `RECEIVER_WAVESPEED_WEBHOOKS` is off.",
            )
        },
    }


def build_document(*, public_url: str, max_body_bytes: int) -> dict[str, Any]:
    """The whole document; `public_url` is its server, `max_body_bytes` the body cap it states."""
    try:
        version = importlib.metadata.version("receiver")
    except importlib.metadata.PackageNotFoundError:
        version = "0.0.0"
    descriptions = {**ERRORS, 413: f"{ERRORS[413]} Here: {max_body_bytes} bytes."}
    responses = {
        f"E{status}": {"description": description, "content": json_content(ref("Error"))}
        for status, description in descriptions.items()
    }
    responses["E401"]["headers"] = {
        "WWW-Authenticate": {"description": "`Bearer` (bearer-token refusals).", "schema": TEXT}
    }
    responses["E503"]["headers"] = {"Retry-After": {"description": "Seconds, when the wait is known.", "schema": TEXT}}
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
        "paths": with_edge_answers(paths()),
        "components": {
            "schemas": component_schemas(),
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
