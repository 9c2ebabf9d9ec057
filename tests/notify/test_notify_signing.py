"""Standard Webhooks signing of our outbound webhooks, checked against the reference library as oracle."""

from __future__ import annotations

import base64
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from receiver.errors import SignatureError
from receiver.notify.signing import new_secret, sign, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the secret of the Svix/Standard Webhooks test vector
OTHER = "whsec_" + base64.b64encode(b"another-secret-of-24-byte").decode()
BODY = b'{"type":"job.succeeded","data":{"job":{"id":"job_1"}}}'
NOW = 1_700_000_000
msg_ids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)


def test_new_secret_is_whsec_and_24_random_bytes() -> None:
    """A new secret is `whsec_` plus standard base64 of 24 bytes, and no two are alike."""
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 24
    assert first != second


def test_sign_matches_the_published_test_vector() -> None:
    """The Standard Webhooks test vector (secret, id, timestamp, body) gives its published signature."""
    headers = sign([SECRET], msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330, body=b'{"test": 2432232314}')
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


@pytest.mark.parametrize(
    "body",
    [BODY, b"{}", '{"text":"caf\u00e9 \u2713"}'.encode(), b'{"big":"' + b"x" * 100_000 + b'"}'],
    ids=["event", "empty-object", "utf8", "large"],
)
def test_reference_library_accepts_our_signature(body: bytes) -> None:
    """The standardwebhooks library verifies what we sign, under the headers it expects."""
    secret = new_secret()
    headers = sign([secret], msg_id="msg_1", timestamp=int(time.time()), body=body)
    Webhook(secret).verify(body, headers)


@given(body=st.text(max_size=300), msg_id=msg_ids)
def test_reference_library_round_trip(body: str, msg_id: str) -> None:
    """Any text body and id we sign at the current time verifies with the reference library."""
    headers = sign([SECRET], msg_id=msg_id, timestamp=int(time.time()), body=body.encode())
    Webhook(SECRET).verify(body.encode(), headers, json_parse=False)


@given(body=st.binary(max_size=512), msg_id=msg_ids, timestamp=st.integers(0, 10**12 - 1))
def test_sign_verify_round_trip(body: bytes, msg_id: str, timestamp: int) -> None:
    """Whatever we sign, our own verify accepts at that moment, for any bytes."""
    verify(SECRET, sign([SECRET], msg_id=msg_id, timestamp=timestamp, body=body), body, now=timestamp)


def test_rotation_sends_both_signatures_and_each_secret_verifies_alone() -> None:
    """With two secrets the header carries two `v1,` entries; a receiver holding either one accepts."""
    now = int(time.time())
    headers = sign([SECRET, OTHER], msg_id="msg_1", timestamp=now, body=BODY)
    entries = headers["webhook-signature"].split(" ")
    assert [entry.split(",")[0] for entry in entries] == ["v1", "v1"]
    for secret in (SECRET, OTHER):
        Webhook(secret).verify(BODY, headers)
        verify(secret, headers, BODY, now=now)
    verify([new_secret(), OTHER], headers, BODY, now=now)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)
    with pytest.raises(SignatureError):
        verify(new_secret(), headers, BODY, now=now)


@pytest.mark.parametrize(
    ("field", "value"),
    [("body", None), ("webhook-id", "msg_2"), ("webhook-timestamp", str(NOW + 1))],
    ids=["body", "id", "timestamp"],
)
def test_tampering_is_refused(field: str, value: str | None) -> None:
    """Changing the body, the id or the timestamp (still inside the window) breaks the signature."""
    headers = sign([SECRET], msg_id="msg_1", timestamp=NOW, body=BODY)
    body = BODY
    if field == "body":
        body = BODY.replace(b"job_1", b"job_2")
    else:
        assert value is not None
        headers[field] = value
    with pytest.raises(SignatureError) as caught:
        verify(SECRET, headers, body, now=NOW)
    assert caught.value.code == "invalid_signature"


@pytest.mark.parametrize("offset", [-301, 301, -86_400], ids=["old", "future", "day-old"])
def test_timestamp_outside_tolerance_is_refused(offset: int) -> None:
    """A signature made more than 300 s away from now, either way, is refused as stale."""
    headers = sign([SECRET], msg_id="msg_1", timestamp=NOW + offset, body=BODY)
    with pytest.raises(SignatureError) as caught:
        verify(SECRET, headers, BODY, now=NOW)
    assert caught.value.code == "stale_timestamp"


def test_timestamp_at_the_edge_of_tolerance_is_accepted() -> None:
    """Exactly `tolerance_s` away still verifies; a custom tolerance narrows the window."""
    headers = sign([SECRET], msg_id="msg_1", timestamp=NOW - 300, body=BODY)
    verify(SECRET, headers, BODY, now=NOW)
    with pytest.raises(SignatureError):
        verify(SECRET, headers, BODY, now=NOW, tolerance_s=60)


@pytest.mark.parametrize(
    "missing", ["webhook-id", "webhook-timestamp", "webhook-signature"], ids=["id", "timestamp", "signature"]
)
@pytest.mark.parametrize("empty", [False, True], ids=["absent", "empty"])
def test_missing_header_is_a_bad_request(missing: str, empty: bool) -> None:
    """Each of the three headers is required; an absent or empty one is a 400, not a signature mismatch."""
    headers = sign([SECRET], msg_id="msg_1", timestamp=NOW, body=BODY)
    if empty:
        headers[missing] = ""
    else:
        del headers[missing]
    with pytest.raises(SignatureError) as caught:
        verify(SECRET, headers, BODY, now=NOW)
    assert (caught.value.code, caught.value.status_code) == ("missing_header", 400)


@pytest.mark.parametrize(
    "timestamp",
    ["1.7e9", "-5", " 1700000000", "\uff11\uff12\uff13", "9" * 13],
    ids=["float", "neg", "space", "wide", "huge"],
)
def test_malformed_timestamp_is_refused(timestamp: str) -> None:
    """A timestamp that is not plain ASCII Unix seconds is a 400 `bad_timestamp`."""
    headers = {**sign([SECRET], msg_id="msg_1", timestamp=NOW, body=BODY), "webhook-timestamp": timestamp}
    with pytest.raises(SignatureError) as caught:
        verify(SECRET, headers, BODY, now=NOW)
    assert (caught.value.code, caught.value.status_code) == ("bad_timestamp", 400)


def test_verify_skips_other_versions_and_garbage_and_ignores_header_case() -> None:
    """Unknown versions (`v1a`) and undecodable entries are skipped; header names match in any case."""
    signed = sign([SECRET], msg_id="msg_1", timestamp=NOW, body=BODY)
    headers = {
        "Webhook-Id": "msg_1",
        "WEBHOOK-TIMESTAMP": str(NOW),
        "Webhook-Signature": f"v1a,AAAA v1,not-base64!! nocomma {signed['webhook-signature']}",
    }
    verify(SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize(
    "secrets",
    [["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], ["whsec_not base64!"], ["whsec_"], []],
    ids=["no-prefix", "bad-base64", "empty-key", "no-secrets"],
)
def test_sign_refuses_unusable_secrets(secrets: list[str]) -> None:
    """Signing needs at least one secret, each `whsec_` plus non-empty standard base64."""
    with pytest.raises(ValueError, match="secret"):
        sign(secrets, msg_id="msg_1", timestamp=NOW, body=BODY)


def test_sign_refuses_a_bare_string() -> None:
    """A single secret string is not a sequence of secrets (it would sign with each character)."""
    with pytest.raises(TypeError):
        sign(SECRET, msg_id="msg_1", timestamp=NOW, body=BODY)
