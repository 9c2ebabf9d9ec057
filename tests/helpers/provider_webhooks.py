"""Webhooks as the providers send them to us: the tokened path of a job, and a fal body signed as fal signs it."""

from __future__ import annotations

import json
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.ingest.signatures import job_token, sign_fal

SECRET_KEY = b"test-secret"  # the receiver's secret key in `make_settings`


def webhook_path(provider: str, job_id: str) -> str:
    """The path (with its token) the receiver gives `provider` for this job's webhooks."""
    return f"/webhooks/{provider}/{job_id}?token={job_token(SECRET_KEY, provider, job_id)}"


def signed_fal_webhook(
    key: Ed25519PrivateKey,
    request_id: str,
    payload: dict[str, Any] | None,
    *,
    status: str = "OK",
    user_id: str = "emulator-user",
    timestamp: int | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A fal completion body and its signed headers, as fal would send them."""
    data: dict[str, Any] = {"request_id": request_id, "gateway_request_id": request_id, "status": status}
    data["payload"] = payload
    data.update(extra or {})
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = sign_fal(
        key,
        request_id=request_id,
        user_id=user_id,
        timestamp=int(time.time()) if timestamp is None else timestamp,
        body=body,
    )
    headers["Content-Type"] = "application/json"
    return body, headers
