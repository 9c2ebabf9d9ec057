"""fal's Ed25519 webhook signatures, JWKS parsing and per-job webhook tokens (pure code, real crypto)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from receiver.errors import SignatureError
from receiver.ingest.signatures import (
    FAL_HEADERS,
    FAL_REQUEST_ID,
    FAL_SIGNATURE,
    FAL_TIMESTAMP,
    FAL_TOLERANCE_S,
    FAL_USER_ID,
    b64url_decode,
    b64url_encode,
    check_job_token,
    fal_message,
    job_token,
    parse_jwks,
    public_jwk,
    sign_fal,
    verify_any,
    verify_fal,
)

# The test vector of docs/providers.md#fal-webhook-signature.
VECTOR_SEED = b"\x01" * 32
VECTOR_X = "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"
VECTOR_BODY = (
    b'{"request_id":"123e4567-e89b-12d3-a456-426614174000","gateway_request_id":'
    b'"123e4567-e89b-12d3-a456-426614174000","status":"OK","payload":{"images":[]}}'
)
VECTOR_REQUEST_ID = "123e4567-e89b-12d3-a456-426614174000"
VECTOR_USER_ID = "test-user"
VECTOR_TIMESTAMP = 1760000000
VECTOR_BODY_SHA256 = "6cfeec59c4614c6096d436db45ea0cd7b083f80c2c4cd1e0826b4caa72371553"
VECTOR_SIGNATURE = (
    "cef1b6048b05d4601b7a20f5f90cea4c62d0615580bd7984c379da5d9deeae22"
    "7248ad6359ca25071d537dd73810a923448b53a12e0d21c804b6c620ed1f4906"
)

SIGNER = Ed25519PrivateKey.from_private_bytes(VECTOR_SEED)
OTHER_SIGNERS = [Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32) for n in (2, 3, 4)]

# Header values as HTTP carries them: visible ASCII, never empty.
header_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)


def vector_headers() -> dict[str, str]:
    """The vector's headers with lower-case names, as `verify_fal` expects from a plain dict."""
    return {
        FAL_REQUEST_ID: VECTOR_REQUEST_ID,
        FAL_USER_ID: VECTOR_USER_ID,
        FAL_TIMESTAMP: str(VECTOR_TIMESTAMP),
        FAL_SIGNATURE: VECTOR_SIGNATURE,
    }


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def signature_error(keys: list[Ed25519PublicKey], headers: Any, body: bytes, now: float) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        verify_fal(keys, headers, body, now=now)
    return caught.value


# --- the test vector ---------------------------------------------------------------------------


def test_vector_body_digest_and_message() -> None:
    """The signed message is the four LF-joined lines, the last the hex SHA-256 of the body bytes."""
    assert hashlib.sha256(VECTOR_BODY).hexdigest() == VECTOR_BODY_SHA256
    message = fal_message(VECTOR_REQUEST_ID, VECTOR_USER_ID, str(VECTOR_TIMESTAMP), VECTOR_BODY)
    assert message == f"{VECTOR_REQUEST_ID}\n{VECTOR_USER_ID}\n{VECTOR_TIMESTAMP}\n{VECTOR_BODY_SHA256}".encode()


def test_vector_verifies_with_the_unpadded_jwk() -> None:
    """docs/providers.md#fal-webhook-signature's vector verifies under its unpadded JWK `x`, giving the header facts."""
    keys = parse_jwks({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": VECTOR_X}]})
    facts = verify_fal(keys, vector_headers(), VECTOR_BODY, now=VECTOR_TIMESTAMP)
    assert (facts.request_id, facts.user_id, facts.timestamp) == (VECTOR_REQUEST_ID, VECTOR_USER_ID, VECTOR_TIMESTAMP)


def test_vector_signing_reproduces_the_signature() -> None:
    """Signing the vector with the all-0x01 seed gives exactly the documented signature and JWK."""
    headers = sign_fal(
        SIGNER, request_id=VECTOR_REQUEST_ID, user_id=VECTOR_USER_ID, timestamp=VECTOR_TIMESTAMP, body=VECTOR_BODY
    )
    assert lower(headers) == vector_headers()
    assert public_jwk(SIGNER) == {"kty": "OKP", "crv": "Ed25519", "x": VECTOR_X}
    assert public_jwk(SIGNER, kid="k1")["kid"] == "k1"


def test_vector_verifies_through_case_insensitive_headers() -> None:
    """Mixed-case header names as sent work when the mapping is case-insensitive (as request headers are)."""
    headers = httpx.Headers(
        sign_fal(
            SIGNER, request_id=VECTOR_REQUEST_ID, user_id=VECTOR_USER_ID, timestamp=VECTOR_TIMESTAMP, body=VECTOR_BODY
        )
    )
    assert verify_fal([SIGNER.public_key()], headers, VECTOR_BODY, now=VECTOR_TIMESTAMP).user_id == VECTOR_USER_ID


def test_vector_fails_with_the_wrong_body() -> None:
    """The vector's signature does not verify a re-serialised (whitespace-changed) copy of the body."""
    respaced = VECTOR_BODY.replace(b'","', b'", "')
    error = signature_error([SIGNER.public_key()], vector_headers(), respaced, VECTOR_TIMESTAMP)
    assert error.code == "no_key_matched"
    assert error.status_code == 401


# --- round trips and tampering ------------------------------------------------------------------


@given(body=st.binary(max_size=2048), request_id=header_text, user_id=header_text, timestamp=st.integers(0, 10**12 - 1))
def test_sign_verify_round_trip(body: bytes, request_id: str, user_id: str, timestamp: int) -> None:
    """Whatever sign_fal signs, verify_fal accepts and reports the same request id, user id and timestamp."""
    headers = lower(sign_fal(SIGNER, request_id=request_id, user_id=user_id, timestamp=timestamp, body=body))
    facts = verify_fal([SIGNER.public_key()], headers, body, now=timestamp)
    assert (facts.request_id, facts.user_id, facts.timestamp) == (request_id, user_id, timestamp)


@given(body=st.binary(min_size=1, max_size=512), data=st.data())
def test_any_body_byte_tamper_fails(body: bytes, data: st.DataObject) -> None:
    """Changing any single byte of the body makes the signature fail."""
    headers = lower(sign_fal(SIGNER, request_id="req", user_id="user", timestamp=VECTOR_TIMESTAMP, body=body))
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    tampered = body[:index] + bytes([body[index] ^ mask]) + body[index + 1 :]
    assert signature_error([SIGNER.public_key()], headers, tampered, VECTOR_TIMESTAMP).code == "no_key_matched"


@pytest.mark.parametrize(
    "name", [FAL_REQUEST_ID, FAL_USER_ID, FAL_TIMESTAMP], ids=["request_id", "user_id", "timestamp"]
)
@given(data=st.data())
def test_any_signed_header_char_tamper_fails(name: str, data: st.DataObject) -> None:
    """Changing any single character of the request id, user id or timestamp header makes verification fail."""
    headers = vector_headers()
    value = headers[name]
    index = data.draw(st.integers(0, len(value) - 1), label="index")
    replacement = data.draw(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(lambda c: c != value[index]), label="char"
    )
    headers[name] = value[:index] + replacement + value[index + 1 :]
    signature_error([SIGNER.public_key()], headers, VECTOR_BODY, VECTOR_TIMESTAMP)


@given(index=st.integers(0, 63), mask=st.integers(1, 255))
def test_any_signature_byte_tamper_fails(index: int, mask: int) -> None:
    """Changing any single byte of the decoded signature makes verification fail."""
    signature = bytearray(bytes.fromhex(VECTOR_SIGNATURE))
    signature[index] ^= mask
    headers = vector_headers() | {FAL_SIGNATURE: signature.hex()}
    assert signature_error([SIGNER.public_key()], headers, VECTOR_BODY, VECTOR_TIMESTAMP).code == "no_key_matched"


def test_several_keys_only_the_last_verifies() -> None:
    """Every key is tried: a set where only the last key signed still verifies."""
    keys = [signer.public_key() for signer in OTHER_SIGNERS] + [SIGNER.public_key()]
    assert verify_fal(keys, vector_headers(), VECTOR_BODY, now=VECTOR_TIMESTAMP).request_id == VECTOR_REQUEST_ID


@pytest.mark.parametrize("keys", [[], [signer.public_key() for signer in OTHER_SIGNERS]], ids=["no_keys", "wrong_keys"])
def test_no_matching_key_is_refused(keys: list[Ed25519PublicKey]) -> None:
    """Well-formed headers that no key verifies fail with no_key_matched (the refetch-worthy case)."""
    error = signature_error(keys, vector_headers(), VECTOR_BODY, VECTOR_TIMESTAMP)
    assert (error.code, error.status_code) == ("no_key_matched", 401)


ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493  # L, the order of the base point


def test_an_unreduced_signature_is_refused() -> None:
    """A signature whose scalar S is replaced by S + L (the same equation, a second encoding anyone can
    derive from a real one) does not verify: one signature, one encoding."""
    signature = bytes.fromhex(VECTOR_SIGNATURE)
    scalar = int.from_bytes(signature[32:], "little") + ED25519_ORDER
    malleated = signature[:32] + scalar.to_bytes(32, "little")
    message = fal_message(VECTOR_REQUEST_ID, VECTOR_USER_ID, str(VECTOR_TIMESTAMP), VECTOR_BODY)
    assert verify_any([SIGNER.public_key()], signature, message)
    assert not verify_any([SIGNER.public_key()], malleated, message)


@pytest.mark.parametrize("length", [0, 32, 63, 65, 128])
def test_a_signature_of_another_length_verifies_nothing(length: int) -> None:
    """Only a 64-byte signature is checked; any other length is simply not a signature of any key."""
    message = fal_message(VECTOR_REQUEST_ID, VECTOR_USER_ID, str(VECTOR_TIMESTAMP), VECTOR_BODY)
    signature = (bytes.fromhex(VECTOR_SIGNATURE) * 2)[:length]
    assert not verify_any([SIGNER.public_key()], signature, message)


# --- timestamps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offset_s",
    [0, FAL_TOLERANCE_S, -FAL_TOLERANCE_S, 299.5, -299.5],
    ids=["exact", "300_ahead", "300_behind", "299.5_ahead", "299.5_behind"],
)
def test_timestamp_within_window_is_accepted(offset_s: float) -> None:
    """A timestamp up to 300 s away from now, in either direction, is accepted."""
    assert verify_fal([SIGNER.public_key()], vector_headers(), VECTOR_BODY, now=VECTOR_TIMESTAMP + offset_s)


@pytest.mark.parametrize(
    "offset_s",
    [FAL_TOLERANCE_S + 1, -(FAL_TOLERANCE_S + 1), 300.5, -300.5, 86400, -86400],
    ids=["301_late", "301_early", "300.5_late", "300.5_early", "day_late", "day_early"],
)
def test_stale_timestamp_is_refused(offset_s: float) -> None:
    """A timestamp more than 300 s in the past or the future is refused as stale, even if correctly signed."""
    error = signature_error([SIGNER.public_key()], vector_headers(), VECTOR_BODY, VECTOR_TIMESTAMP + offset_s)
    assert (error.code, error.status_code) == ("stale_timestamp", 401)


def test_custom_tolerance_is_honoured() -> None:
    """A caller-supplied tolerance replaces the 300 s default."""
    with pytest.raises(SignatureError, match="window"):
        verify_fal([SIGNER.public_key()], vector_headers(), VECTOR_BODY, now=VECTOR_TIMESTAMP + 11, tolerance_s=10)
    assert verify_fal([SIGNER.public_key()], vector_headers(), VECTOR_BODY, now=VECTOR_TIMESTAMP + 10, tolerance_s=10)


@pytest.mark.parametrize(
    "raw",
    [
        "abc",
        "-1760000000",
        "1760000000.0",
        "1e9",
        " 1760000000",
        "1760000000 ",
        "0x68e7b700",
        "\uff11\uff17\uff16",
        "9" * 13,
    ],
    ids=["letters", "negative", "decimal", "exponent", "lead_space", "trail_space", "hex", "fullwidth", "too_long"],
)
def test_non_numeric_timestamp_is_refused(raw: str) -> None:
    """A timestamp that is not plain ASCII Unix seconds is refused with bad_timestamp (400)."""
    headers = vector_headers() | {FAL_TIMESTAMP: raw}
    error = signature_error([SIGNER.public_key()], headers, VECTOR_BODY, VECTOR_TIMESTAMP)
    assert (error.code, error.status_code) == ("bad_timestamp", 400)


# --- header presence and encoding ---------------------------------------------------------------


@pytest.mark.parametrize("name", FAL_HEADERS, ids=["request_id", "user_id", "timestamp", "signature"])
@pytest.mark.parametrize("how", ["absent", "empty"], ids=["absent", "empty"])
def test_missing_header_is_refused(name: str, how: str) -> None:
    """Each of the four headers is required: absent or empty, the webhook is refused with 400 missing_header."""
    headers = vector_headers()
    if how == "absent":
        del headers[name]
    else:
        headers[name] = ""
    error = signature_error([SIGNER.public_key()], headers, VECTOR_BODY, VECTOR_TIMESTAMP)
    assert (error.code, error.status_code) == ("missing_header", 400)
    assert name in error.message


@pytest.mark.parametrize(
    "signature",
    [
        "zz" * 64,
        VECTOR_SIGNATURE[:-1],
        VECTOR_SIGNATURE[:-2],
        VECTOR_SIGNATURE + "00",
        "00" * 32,
        VECTOR_SIGNATURE[:-1] + "g",
        "base64+notHex==",
    ],
    ids=["non_hex", "odd_length", "63_bytes", "65_bytes", "32_bytes", "one_bad_char", "base64"],
)
def test_badly_encoded_signature_is_refused(signature: str) -> None:
    """A signature that is not exactly 64 hex-encoded bytes is refused with bad_signature_encoding."""
    headers = vector_headers() | {FAL_SIGNATURE: signature}
    error = signature_error([SIGNER.public_key()], headers, VECTOR_BODY, VECTOR_TIMESTAMP)
    assert (error.code, error.status_code) == ("bad_signature_encoding", 401)


# --- JWKS parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("x", [VECTOR_X, VECTOR_X + "="], ids=["unpadded", "padded"])
@pytest.mark.parametrize("form", ["mapping", "str", "bytes"], ids=["mapping", "json_str", "json_bytes"])
def test_parse_jwks_accepts_padded_and_unpadded_x(x: str, form: str) -> None:
    """`x` decodes with or without `=` padding, from a mapping, a JSON string or JSON bytes."""
    document: dict[str, Any] = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1"}]}
    source: Any = {"mapping": document, "str": json.dumps(document), "bytes": json.dumps(document).encode()}[form]
    keys = parse_jwks(source)
    assert [raw_public(key) for key in keys] == [raw_public(SIGNER.public_key())]


def test_parse_jwks_skips_unusable_keys() -> None:
    """Keys of other types or curves, broken encodings and wrong lengths are skipped; Ed25519 keys are kept."""
    other = b64url_encode(raw_public(OTHER_SIGNERS[0].public_key()))
    document = {
        "keys": [
            {"kty": "RSA", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "x": VECTOR_X, "y": VECTOR_X},
            {"kty": "OKP", "crv": "X25519", "x": VECTOR_X},
            {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(b"\x05" * 31)},
            {"kty": "OKP", "crv": "Ed25519", "x": "a"},
            {"kty": "OKP", "crv": "Ed25519", "x": 12345},
            {"kty": "OKP", "crv": "Ed25519"},
            "not-a-key",
            None,
            {"kty": "OKP", "crv": "Ed25519", "x": VECTOR_X},
            {"x": other},  # the docs only promise `x`: a bare key counts as Ed25519
        ]
    }
    keys = parse_jwks(document)
    assert [raw_public(key) for key in keys] == [raw_public(SIGNER.public_key()), b64url_decode(other)]


def test_parse_jwks_with_no_keys_is_empty() -> None:
    """A JWKS with an empty key list parses to no keys (not an error)."""
    assert parse_jwks(b'{"keys": []}') == []


@pytest.mark.parametrize(
    "document",
    [b"not json", b"\xff\xfe", "", "null", "[]", '"keys"', '{"keys": {}}', '{"keys": null}', '{"nokeys": []}', []],
    ids=["text", "not_utf8", "empty", "null", "list", "string", "keys_object", "keys_null", "no_keys", "list_object"],
)
def test_parse_jwks_garbage_raises_value_error(document: Any) -> None:
    """A document that is not a JWKS raises ValueError (which the cache treats as a failed fetch)."""
    with pytest.raises(ValueError):
        parse_jwks(document)


@given(raw=st.binary(max_size=128))
def test_b64url_round_trip(raw: bytes) -> None:
    """b64url_encode drops padding and b64url_decode restores it: any bytes round-trip."""
    encoded = b64url_encode(raw)
    assert "=" not in encoded
    assert b64url_decode(encoded) == raw


# --- per-job webhook tokens -----------------------------------------------------------------------

SECRET = b"server-secret"


def test_job_token_is_accepted_for_its_job() -> None:
    """The token made for a provider and job passes the check for that same provider and job."""
    token = job_token(SECRET, "fal", "job_1")
    check_job_token(SECRET, "fal", "job_1", token)
    assert token == job_token(SECRET, "fal", "job_1")
    assert "=" not in token


@pytest.mark.parametrize(
    ("provider", "job_id", "token"),
    [
        ("fal", "job_2", job_token(SECRET, "fal", "job_1")),
        ("wavespeed", "job_1", job_token(SECRET, "fal", "job_1")),
        ("fal", "job_1", job_token(b"other-secret", "fal", "job_1")),
        ("fal", "job_1", ""),
        ("fal", "job_1", None),
        ("fal", "job_1", job_token(SECRET, "fal", "job_1")[:-1]),
        ("fal", "job_1", "é" * 43),
    ],
    ids=["wrong_job", "wrong_provider", "wrong_secret", "empty", "none", "truncated", "non_ascii"],
)
def test_wrong_job_token_is_refused(provider: str, job_id: str, token: str | None) -> None:
    """A token for another job, provider or secret, or none at all, is refused with 403 bad_token."""
    with pytest.raises(SignatureError) as caught:
        check_job_token(SECRET, provider, job_id, token)
    assert (caught.value.code, caught.value.status_code) == ("bad_token", 403)


@given(job_id=st.text(min_size=1, max_size=40), token=st.text(max_size=60))
def test_job_token_check_never_crashes(job_id: str, token: str) -> None:
    """Any token string either passes or is refused with bad_token; nothing else escapes the check."""
    try:
        check_job_token(SECRET, "fal", job_id, token)
    except SignatureError as exc:
        assert exc.code == "bad_token"
    else:
        assert token == job_token(SECRET, "fal", job_id)
