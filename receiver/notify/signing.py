"""Standard Webhooks signatures (the Svix scheme) for our outbound webhooks: pure, the clock passed in.

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, HMAC-SHA256 under the base64-decoded
secret (the part after `whsec_`), sent as `webhook-signature: v1,<base64>`; during a secret rotation
the old and new signatures travel together, separated by a space. See https://www.standardwebhooks.com/.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as secrets_module
from collections.abc import Mapping, Sequence

from receiver.errors import SignatureError

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks secret prefix, not a secret
SECRET_BYTES = 24
TOLERANCE_S = 300
WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"
SIGNATURE_VERSION = "v1"
MAX_TIMESTAMP_DIGITS = 12


def new_secret() -> str:
    """A fresh `whsec_` secret: 24 random bytes, standard base64."""
    return SECRET_PREFIX + base64.b64encode(secrets_module.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret; ValueError when it is not one (a configuration error)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is whsec_ followed by standard base64") from exc
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def signature(key: bytes, *, msg_id: str, timestamp: int | str, body: bytes) -> bytes:
    """The raw HMAC-SHA256 over the Standard Webhooks signed content."""
    return hmac.digest(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)


def sign(secrets: Sequence[str], *, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, with one `v1,` signature per secret (in order)."""
    if isinstance(secrets, str):
        raise TypeError("pass a sequence of secrets, not one string")
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    digests = (signature(secret_key(s), msg_id=msg_id, timestamp=timestamp, body=body) for s in secrets)
    signatures = " ".join(f"{SIGNATURE_VERSION},{base64.b64encode(d).decode()}" for d in digests)
    return {WEBHOOK_ID: msg_id, WEBHOOK_TIMESTAMP: str(timestamp), WEBHOOK_SIGNATURE: signatures}


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return ""


def verify(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance_s: float = TOLERANCE_S,
) -> None:
    """Raise SignatureError unless one `v1` signature in `headers` matches `body` under one of the secrets.

    Header names are matched case-insensitively. The timestamp must lie within `tolerance_s` of `now`
    (Unix seconds) in either direction; signatures of other versions (`v1a`, ...) are skipped.
    """
    keys = [secret_key(s) for s in ([secret] if isinstance(secret, str) else secret)]
    msg_id, raw_ts, raw_sigs = (_header(headers, n) for n in (WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE))
    for name, value in ((WEBHOOK_ID, msg_id), (WEBHOOK_TIMESTAMP, raw_ts), (WEBHOOK_SIGNATURE, raw_sigs)):
        if not value:
            raise SignatureError(f"missing header {name}", code="missing_header", status_code=400)
    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > MAX_TIMESTAMP_DIGITS:
        raise SignatureError(f"{WEBHOOK_TIMESTAMP} is not Unix seconds", code="bad_timestamp", status_code=400)
    if abs(now - int(raw_ts)) > tolerance_s:
        raise SignatureError(f"{WEBHOOK_TIMESTAMP} is outside the +-{tolerance_s:g} s window", code="stale_timestamp")
    offered: list[bytes] = []
    for item in raw_sigs.split():
        version, _, encoded = item.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            offered.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    expected = [signature(key, msg_id=msg_id, timestamp=raw_ts, body=body) for key in keys]
    # Compare every pair, without an early exit, so timing says nothing about which one matched.
    matched = False
    for candidate in offered:
        for wanted in expected:
            matched |= hmac.compare_digest(candidate, wanted)
    if not matched:
        raise SignatureError("no matching v1 signature", code="invalid_signature")
