"""Pure signature code: fal's Ed25519 webhook scheme, JWK parsing and our per-job webhook tokens.

Nothing here does I/O or reads a clock: callers pass `now` (Unix seconds) in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from receiver.errors import SignatureError

FAL_TOLERANCE_S = 300
FAL_REQUEST_ID = "x-fal-webhook-request-id"
FAL_USER_ID = "x-fal-webhook-user-id"
FAL_TIMESTAMP = "x-fal-webhook-timestamp"
FAL_SIGNATURE = "x-fal-webhook-signature"
FAL_HEADERS = (FAL_REQUEST_ID, FAL_USER_ID, FAL_TIMESTAMP, FAL_SIGNATURE)
SIGNATURE_BYTES = 64


@dataclass(frozen=True, slots=True)
class FalSignedHeaders:
    """The verified facts of a fal webhook's headers."""

    request_id: str
    user_id: str
    timestamp: int
    raw_timestamp: str = ""  # the header exactly as received: it is what fal signed


def fal_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The exact bytes fal signs: four LF-joined lines, the last the hex SHA-256 of the raw body."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((request_id, user_id, timestamp, digest)).encode()


def sign_fal(
    private_key: Ed25519PrivateKey, *, request_id: str, user_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Headers fal would send for `body` (used by the emulator and by tests)."""
    signature = private_key.sign(fal_message(request_id, user_id, str(timestamp), body))
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": str(timestamp),
        "X-Fal-Webhook-Signature": signature.hex(),
    }


def parse_fal_headers(
    headers: Mapping[str, str], *, now: float, tolerance_s: int = FAL_TOLERANCE_S
) -> tuple[FalSignedHeaders, bytes]:
    """Check presence, timestamp window and signature encoding; return the facts and the raw signature.

    `headers` must be case-insensitive (Starlette's `Headers`) or use lower-case keys.
    """
    values: dict[str, str] = {}
    for name in FAL_HEADERS:
        value = headers.get(name)
        if not value:
            raise SignatureError(f"missing header {name}", code="missing_header", status_code=400)
        values[name] = value
    raw_ts = values[FAL_TIMESTAMP]
    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 12:
        raise SignatureError(f"{FAL_TIMESTAMP} is not Unix seconds", code="bad_timestamp", status_code=400)
    timestamp = int(raw_ts)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"{FAL_TIMESTAMP} is outside the +-{tolerance_s} s window", code="stale_timestamp")
    try:
        signature = bytes.fromhex(values[FAL_SIGNATURE])
    except ValueError:
        raise SignatureError(f"{FAL_SIGNATURE} is not hex", code="bad_signature_encoding") from None
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"{FAL_SIGNATURE} is not 64 bytes", code="bad_signature_encoding")
    facts = FalSignedHeaders(values[FAL_REQUEST_ID], values[FAL_USER_ID], timestamp, raw_ts)
    return facts, signature


def verify_fal(
    keys: Sequence[Ed25519PublicKey],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance_s: int = FAL_TOLERANCE_S,
) -> FalSignedHeaders:
    """Verify a fal webhook over the raw `body`; any key in `keys` may have signed it.

    Raises `SignatureError`; its code is `no_key_matched` when the headers were well formed but no
    key verified (the one case where refetching the JWKS can help).
    """
    headers = {name.lower(): value for name, value in headers.items()}
    facts, signature = parse_fal_headers(headers, now=now, tolerance_s=tolerance_s)
    message = fal_message(facts.request_id, facts.user_id, headers[FAL_TIMESTAMP], body)
    if verify_any(keys, signature, message):
        return facts
    raise SignatureError("signature does not verify with any known key", code="no_key_matched")


def verify_any(keys: Iterable[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
    """Whether any of `keys` made the 64-byte Ed25519 `signature` over `message`.

    Checked with libsodium (PyNaCl), not with the keys' own `verify`: it takes half the CPU of `cryptography`'s
    (about 55 against 105 us here) and, being a cffi call, releases the GIL while it runs, which
    `cryptography`'s Ed25519 verify does not (see `receiver.ingest.verifier`). libsodium is the stricter of the
    two (it also refuses non-canonical and small-order encodings), so nothing a key really signed is refused.
    """
    if len(signature) != SIGNATURE_BYTES:
        return False
    signed = signature + message
    for key in keys:
        try:
            crypto_sign_open(signed, key.public_bytes_raw())
        except BadSignatureError:
            continue
        return True
    return False


def b64url_decode(value: str) -> bytes:
    """Base64url without the padding JWKs leave off (fal's own sample trips on that)."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parse_jwks(document: bytes | str | Mapping[str, Any]) -> list[Ed25519PublicKey]:
    """Ed25519 public keys from a JWKS document; keys of other types or broken encodings are skipped.

    Raises `ValueError` when the document is not a JWKS at all.
    """
    data = json.loads(document) if isinstance(document, bytes | str) else document
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise ValueError("JWKS document has no 'keys' list")
    keys: list[Ed25519PublicKey] = []
    for jwk in data["keys"]:
        if not isinstance(jwk, Mapping) or not isinstance(jwk.get("x"), str):
            continue
        if jwk.get("kty", "OKP") != "OKP" or jwk.get("crv", "Ed25519") != "Ed25519":
            continue
        try:
            raw = b64url_decode(jwk["x"])
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
    return keys


def public_jwk(private_key: Ed25519PrivateKey, *, kid: str | None = None) -> dict[str, str]:
    raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    if kid:
        jwk["kid"] = kid
    return jwk


def job_token(secret: bytes, provider: str, job_id: str) -> str:
    """The per-job token we put in the webhook URL: an HMAC of the job id under the server secret."""
    mac = hmac.digest(secret, f"webhook:{provider}:{job_id}".encode(), "sha256")  # one-shot: per webhook
    return b64url_encode(mac)


def check_job_token(secret: bytes, provider: str, job_id: str, token: str | None) -> None:
    """Raise `SignatureError` (403, `bad_token`) unless `token` is this job's token for `provider`."""
    # Compare bytes: compare_digest raises TypeError on a str with non-ASCII characters, and the token
    # comes straight from the query string.
    expected = job_token(secret, provider, job_id).encode()
    if not token or not hmac.compare_digest(expected, token.encode("utf-8", "surrogatepass")):
        raise SignatureError("webhook token does not match this job", code="bad_token", status_code=403)


WAVESPEED_TOLERANCE_S = 300
WAVESPEED_VERSION = "v3"


def wavespeed_key(secret: str) -> bytes:
    """WaveSpeed's HMAC key: the secret minus its `whsec_` prefix, used as ASCII (not base64-decoded)."""
    return secret.removeprefix("whsec_").encode()


def wavespeed_signature(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    message = f"{webhook_id}.{timestamp}.".encode() + body
    return hmac.new(wavespeed_key(secret), message, hashlib.sha256).hexdigest()


def sign_wavespeed(secret: str, *, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Headers WaveSpeed would send for `body` (used by the emulator and by tests)."""
    signature = wavespeed_signature(secret, webhook_id, str(timestamp), body)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"{WAVESPEED_VERSION},{signature}",
    }


def verify_wavespeed(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float, tolerance_s: int = WAVESPEED_TOLERANCE_S
) -> str:
    """Verify a WaveSpeed webhook over the raw body; returns the `webhook-id`. Raises `SignatureError`."""
    headers = {name.lower(): value for name, value in headers.items()}
    values = {}
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        value = headers.get(name)
        if not value:
            raise SignatureError(f"missing header {name}", code="missing_header", status_code=400)
        values[name] = value
    raw_ts = values["webhook-timestamp"]
    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 12:
        raise SignatureError("webhook-timestamp is not Unix seconds", code="bad_timestamp", status_code=400)
    if abs(now - int(raw_ts)) > tolerance_s:
        raise SignatureError(f"webhook-timestamp is outside the +-{tolerance_s} s window", code="stale_timestamp")
    version, _, signature = values["webhook-signature"].partition(",")
    if version != WAVESPEED_VERSION or not signature:
        raise SignatureError("webhook-signature is not of the form v3,<hex>", code="bad_signature_encoding")
    expected = wavespeed_signature(secret, values["webhook-id"], raw_ts, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode("ascii", "replace")):
        raise SignatureError("signature does not match the webhook secret", code="invalid_signature")
    return values["webhook-id"]
