"""The fal webhook endpoint over real HTTP: every acceptance and rejection case, races, key rotation, JWKS outage."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.emulators.fal import FalEmulatorConfig
from tests.helpers.database import read_rows
from tests.helpers.provider_webhooks import signed_fal_webhook
from tests.helpers.stack import Stack, StackFactory

PAYLOAD = {"images": [{"url": "https://v3.fal.media/files/x/out.png", "width": 8, "height": 8}], "seed": 7}


async def submitted_job(stack: Stack) -> dict[str, Any]:
    """A job submitted to the emulator (which is told not to deliver), so tests send the webhooks."""
    stack.emulator.config.no_delivery = True
    job = await stack.create_job()
    assert await stack.services.runner.run_once() == 1
    job = await stack.job(job["id"])
    assert job["status"] == "submitted" and job["provider_request_id"]
    return job


async def post(stack: Stack, job_id: str, body: bytes, headers: dict[str, str], path: str | None = None) -> Any:
    return await stack.client.post(path or stack.webhook_path(job_id), content=body, headers=headers)


async def inbox(stack: Stack) -> list[Any]:
    return await read_rows(stack.services.db.path, "SELECT * FROM inbox")


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack(workers=False)


async def test_valid_webhook_finalizes_job(stack: Stack) -> None:
    """A correctly signed OK webhook answers 200 after recording; the job succeeds with fal's payload."""
    job = await submitted_job(stack)
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD)
    response = await post(stack, job["id"], body, headers)
    assert response.status_code == 200
    assert response.json() == {"status": "applied"}
    final = await stack.job(job["id"])
    assert final["status"] == "succeeded"
    assert final["provider_result"] == PAYLOAD
    assert final["result"] == {
        "images": [{"url": PAYLOAD["images"][0]["url"], "inline": None, "content_type": None, "width": 8, "height": 8}],
        "seed": 7,
        "nsfw": None,
        "timings": None,
    }
    assert final["completed_at"] is not None
    rows = await inbox(stack)
    assert len(rows) == 1
    assert bytes(rows[0]["body"]) == body  # the raw bytes, never re-serialised
    stored_headers = json.loads(rows[0]["headers"])
    assert stored_headers["x-fal-webhook-request-id"] == job["provider_request_id"]
    assert "token" not in json.dumps(stored_headers)


async def test_duplicate_webhook_changes_nothing(stack: Stack) -> None:
    """The same webhook delivered again answers 2xx, records nothing new and leaves the job alone."""
    job = await submitted_job(stack)
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD)
    assert (await post(stack, job["id"], body, headers)).status_code == 200
    first = await stack.job(job["id"])
    again = await post(stack, job["id"], body, headers)
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate"}
    assert await stack.job(job["id"]) == first
    assert len(await inbox(stack)) == 1


async def test_error_webhook_fails_job_and_later_success_cannot_move_it(stack: Stack) -> None:
    """ERROR fails the job with fal's text; a terminal job never changes again."""
    job = await submitted_job(stack)
    detail = {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]}
    body, headers = signed_fal_webhook(
        stack.signing_key,
        job["provider_request_id"],
        detail,
        status="ERROR",
        extra={"error": "Invalid status code: 422"},
    )
    assert (await post(stack, job["id"], body, headers)).status_code == 200
    failed = await stack.job(job["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["message"] == "Invalid status code: 422"
    assert failed["error"]["details"] == detail
    ok_body, ok_headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD)
    assert (await post(stack, job["id"], ok_body, ok_headers)).status_code == 200
    assert await stack.job(job["id"]) == failed


def _forged(key: Ed25519PrivateKey, request_id: str) -> tuple[bytes, dict[str, str]]:
    return signed_fal_webhook(Ed25519PrivateKey.generate(), request_id, PAYLOAD)


def _stale(key: Ed25519PrivateKey, request_id: str) -> tuple[bytes, dict[str, str]]:
    return signed_fal_webhook(key, request_id, PAYLOAD, timestamp=int(time.time()) - 301)


def _future(key: Ed25519PrivateKey, request_id: str) -> tuple[bytes, dict[str, str]]:
    # An hour ahead: int(time.time()) + 301 is only 300 s ahead once the request takes the rest of its second
    # to arrive, which a busy machine makes happen (the window's edges are tests/ingest/test_signatures.py's).
    return signed_fal_webhook(key, request_id, PAYLOAD, timestamp=int(time.time()) + 3600)


def _tampered(key: Ed25519PrivateKey, request_id: str) -> tuple[bytes, dict[str, str]]:
    body, headers = signed_fal_webhook(key, request_id, PAYLOAD)
    return body.replace(b'"seed":7', b'"seed":8'), headers


def _bad_hex(key: Ed25519PrivateKey, request_id: str) -> tuple[bytes, dict[str, str]]:
    body, headers = signed_fal_webhook(key, request_id, PAYLOAD)
    headers["X-Fal-Webhook-Signature"] = "zz" * 64
    return body, headers


def _missing_header(key: Ed25519PrivateKey, request_id: str) -> tuple[bytes, dict[str, str]]:
    body, headers = signed_fal_webhook(key, request_id, PAYLOAD)
    del headers["X-Fal-Webhook-User-Id"]
    return body, headers


def _header_body_mismatch(key: Ed25519PrivateKey, request_id: str) -> tuple[bytes, dict[str, str]]:
    body, _ = signed_fal_webhook(key, request_id, PAYLOAD)
    _, headers = signed_fal_webhook(key, str(uuid.uuid4()), PAYLOAD)
    # Re-sign the real body under the other request id: signature valid, ids disagree.
    from receiver.ingest.signatures import sign_fal

    headers.update(
        sign_fal(
            key,
            request_id=headers["X-Fal-Webhook-Request-Id"],
            user_id="emulator-user",
            timestamp=int(time.time()),
            body=body,
        )
    )
    return body, headers


def _other_request(key: Ed25519PrivateKey, request_id: str) -> tuple[bytes, dict[str, str]]:
    return signed_fal_webhook(key, str(uuid.uuid4()), PAYLOAD)


def _not_json(key: Ed25519PrivateKey, request_id: str) -> tuple[bytes, dict[str, str]]:
    from receiver.ingest.signatures import sign_fal

    body = b"not json at all"
    return body, sign_fal(key, request_id=request_id, user_id="emulator-user", timestamp=int(time.time()), body=body)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        pytest.param(_forged, 401, "no_key_matched", id="forged-signature"),
        pytest.param(_stale, 401, "stale_timestamp", id="stale-timestamp"),
        pytest.param(_future, 401, "stale_timestamp", id="future-timestamp"),
        pytest.param(_tampered, 401, "no_key_matched", id="tampered-body"),
        pytest.param(_bad_hex, 401, "bad_signature_encoding", id="signature-not-hex"),
        pytest.param(_missing_header, 400, "missing_header", id="missing-header"),
        pytest.param(_header_body_mismatch, 400, "request_id_mismatch", id="header-body-request-id"),
        pytest.param(_other_request, 409, "request_id_mismatch", id="other-request-of-ours"),
        pytest.param(_not_json, 400, "malformed_body", id="body-not-json"),
    ],
)
async def test_bad_webhooks_are_refused_and_change_nothing(stack: Stack, make: Any, status: int, code: str) -> None:
    """Forged, stale, tampered or mismatched webhooks get a 4xx in the error shape; nothing is recorded."""
    job = await submitted_job(stack)
    body, headers = make(stack.signing_key, job["provider_request_id"])
    response = await post(stack, job["id"], body, headers)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert await stack.job(job["id"]) == job
    assert await inbox(stack) == []


@pytest.mark.parametrize(
    "token", [pytest.param("", id="empty"), pytest.param("wrong", id="wrong"), pytest.param(None, id="absent")]
)
async def test_bad_token_is_refused(stack: Stack, token: str | None) -> None:
    """A validly signed webhook without this job's token is refused with 403 (fal signs for every account)."""
    job = await submitted_job(stack)
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD)
    path = f"/webhooks/fal/{job['id']}" + ("" if token is None else f"?token={token}")
    response = await post(stack, job["id"], body, headers, path=path)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "bad_token"
    assert await inbox(stack) == []


async def test_token_of_another_job_is_refused(stack: Stack) -> None:
    """A token is bound to one job id."""
    job = await submitted_job(stack)
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD)
    other = stack.webhook_path("job_OTHER").split("?")[1]
    response = await post(stack, job["id"], body, headers, path=f"/webhooks/fal/{job['id']}?{other}")
    assert response.status_code == 403


async def test_unknown_job_is_404_so_fal_retries(stack: Stack) -> None:
    """A webhook for a job we never created is not acknowledged."""
    body, headers = signed_fal_webhook(stack.signing_key, str(uuid.uuid4()), PAYLOAD)
    response = await post(stack, "job_NOPE", body, headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_pinned_user_id_refuses_other_accounts(make_stack: StackFactory) -> None:
    """With RECEIVER_FAL_USER_ID set, a webhook signed for another fal user is refused with 403."""
    stack = await make_stack(workers=False, fal_user_id="emulator-user")
    job = await submitted_job(stack)
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD, user_id="someone")
    response = await post(stack, job["id"], body, headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "foreign_user"
    good_body, good_headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD)
    assert (await post(stack, job["id"], good_body, good_headers)).status_code == 200


async def test_oversized_body_is_413(make_stack: StackFactory) -> None:
    """A body over RECEIVER_MAX_BODY_BYTES is refused before verification."""
    stack = await make_stack(workers=False, max_body_bytes=2048)
    job = await submitted_job(stack)
    big = {"images": [{"url": "https://v3.fal.media/x", "pad": "x" * 4096}]}
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], big)
    response = await post(stack, job["id"], body, headers)
    assert response.status_code == 413
    assert await inbox(stack) == []


async def test_trailing_slash_is_not_redirected(stack: Stack) -> None:
    """Never a 3xx: providers do not follow redirects."""
    job = await submitted_job(stack)
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], PAYLOAD)
    path = stack.webhook_path(job["id"]).replace("?", "/?")
    response = await post(stack, job["id"], body, headers, path=path)
    assert response.status_code == 404


async def test_non_final_status_is_ignored(stack: Stack) -> None:
    """A verified event that is neither OK nor ERROR is answered 2xx and does nothing."""
    job = await submitted_job(stack)
    body, headers = signed_fal_webhook(stack.signing_key, job["provider_request_id"], None, status="IN_QUEUE")
    response = await post(stack, job["id"], body, headers)
    assert response.status_code == 200
    assert response.json() == {"status": "ignored"}
    assert (await stack.job(job["id"]))["status"] == "submitted"


async def test_webhook_before_submit_response_binds_request_id(stack: Stack) -> None:
    """A webhook that beats the submit response binds the signed request id to the job and finalizes it."""
    job = await stack.create_job()  # never submitted: the runner is not running
    request_id = str(uuid.uuid4())
    body, headers = signed_fal_webhook(stack.signing_key, request_id, PAYLOAD)
    assert (await post(stack, job["id"], body, headers)).status_code == 200
    final = await stack.job(job["id"])
    assert final["status"] == "succeeded"
    assert final["provider_request_id"] == request_id


async def test_payload_error_fetches_result(make_stack: StackFactory) -> None:
    """OK with payload null is a success whose output is fetched from the result URL."""
    stack = await make_stack(emulator_config=FalEmulatorConfig(queue_s=0.01, inference_s=0.02, payload_error=True))
    job = await stack.create_job()
    final = await stack.wait_final(job["id"])
    assert final["status"] == "succeeded"
    assert final["result"]["images"][0]["url"].startswith(stack.emulator_url)


async def test_key_rotation_is_picked_up(make_stack: StackFactory) -> None:
    """After fal rotates its key, the first webhook with the new key triggers one JWKS refetch and verifies."""
    stack = await make_stack()
    first = await stack.create_job()
    assert (await stack.wait_final(first["id"]))["status"] == "succeeded"
    fal = stack.services.providers["fal"]
    fetches = fal.jwks.fetches  # type: ignore[attr-defined]
    stack.emulator.rotate_key()
    second = await stack.create_job()
    assert (await stack.wait_final(second["id"]))["status"] == "succeeded"
    assert fal.jwks.fetches == fetches + 1  # type: ignore[attr-defined]


async def test_jwks_outage_uses_last_good_keys(make_stack: StackFactory) -> None:
    """With the JWKS host down, a refetch fails and webhooks still verify against the last good keys."""
    stack = await make_stack()
    jwks_answers: list[int] = []

    async def record(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/jwks.json"):
            jwks_answers.append(response.status_code)

    stack.services.http.event_hooks["response"].append(record)
    first = await stack.wait_final((await stack.create_job())["id"])
    assert first["status"] == "succeeded"
    assert jwks_answers == [200]
    stack.emulator.config.jwks_down = True
    # A signature no cached key verifies makes the cache refetch (the tests' refetch interval is 0): the JWKS is down.
    body, headers = signed_fal_webhook(Ed25519PrivateKey.generate(), first["provider_request_id"], PAYLOAD)
    assert (await post(stack, first["id"], body, headers)).status_code == 401
    assert jwks_answers == [200, 503]
    second = await stack.create_job()
    assert (await stack.wait_final(second["id"]))["status"] == "succeeded"
    assert jwks_answers == [200, 503]  # verified against the keys kept from before the outage


async def test_no_keys_at_all_is_503_then_fal_retry_succeeds(make_stack: StackFactory) -> None:
    """With no keys ever fetched, the webhook gets 503 (so fal retries) and succeeds once the JWKS is back."""
    config = FalEmulatorConfig(queue_s=0.01, inference_s=0.02, time_scale=0.002, jwks_down=True)
    stack = await make_stack(emulator_config=config)
    job = await stack.create_job()
    await stack.wait_for(
        job["id"],
        lambda _: any(
            attempt.status_code == 503 for request in stack.emulator.requests.values() for attempt in request.deliveries
        ),
    )
    assert (await stack.job(job["id"]))["status"] in {"submitted", "running"}
    stack.emulator.config.jwks_down = False
    assert (await stack.wait_final(job["id"]))["status"] == "succeeded"
