"""Idempotency keys: the `Idempotency-Key` header, request fingerprints, and claiming a key in a transaction.

Semantics are Stripe's (and the IETF draft "The Idempotency-Key HTTP Header Field"): the first request
with a key creates the job and stores the key with it, in one transaction; a retry with the same key and
the same body gets that job back (200, `Idempotent-Replayed: true`) instead of a second job; the same key
with a different body is refused (409 `idempotency_key_reused`). A request refused before anything was
stored (bad body, provider not configured) stores no key, so it can be retried with the same key.

Scope: one server has one API identity (`RECEIVER_API_TOKEN`), so a key belongs to the operation
(`POST /v1/jobs`) and not to the bearer token: a token rotated between two tries of a request must not
turn the second into a second paid job, and a token is a secret we never store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from receiver.errors import ConflictError, RejectError
from receiver.storage import jobs
from receiver.storage.base import Row, Transaction

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255  # Stripe's limit
RETENTION_S = 24 * 3600  # the least time a key is kept; a retention sweep may delete older ones
JOBS_SCOPE = "POST /v1/jobs"
_PRINTABLE = frozenset(range(0x20, 0x7F))


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """A request's key under its scope, and the fingerprint of the request it comes with."""

    scope: str
    key: str
    fingerprint: str


def parse_key(values: list[str]) -> str | None:
    """The key of an `Idempotency-Key` header (None when absent), or a 400 naming the header.

    Taken as sent (`Idempotency-Key: 8e03978e-...`, as Stripe's clients send it) or as the IETF draft's
    structured-field string (`Idempotency-Key: "8e03978e-..."`); both forms name the same key.
    """
    if not values:
        return None
    if len(values) > 1:
        raise _invalid("send it once")
    raw = values[0].strip(" \t")
    key = _unquote(raw) if raw.startswith('"') else raw
    if key is None or not 1 <= len(key) <= MAX_KEY_CHARS or not _PRINTABLE.issuperset(map(ord, key)):
        raise _invalid(f"must be 1 to {MAX_KEY_CHARS} printable ASCII characters (a UUID is a good key)")
    return key


def _unquote(raw: str) -> str | None:
    """An RFC 8941 sf-string's value (`"a\\"b"` -> `a"b`), or None when it is not one."""
    out, escaped = [], False
    for index, char in enumerate(raw[1:], start=1):
        if escaped:
            if char not in '"\\':
                return None
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return "".join(out) if index == len(raw) - 1 else None
        else:
            out.append(char)
    return None  # no closing quote


def _invalid(why: str) -> RejectError:
    return RejectError(f"{HEADER} header: {why}", code="invalid_idempotency_key")


def fingerprint(body: Any) -> str:
    """sha256 (hex) of the parsed JSON body in a canonical form: key order and whitespace do not count."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def reused_error() -> ConflictError:
    return ConflictError(
        f"{HEADER} header: this key was already used with a different request body; "
        "send the same body to get the job it created, or a new key for a new job",
        code="idempotency_key_reused",
    )


def claim_key(tx: Transaction, claim: IdempotencyClaim, job_id: str, now: float) -> str | None:
    """Inside the writer transaction that inserts job `job_id`: claim the key for it (None), or return the
    id of the job that already holds it (same body), or raise `idempotency_key_reused` (different body).

    The primary key decides, not a read before the write: of any number of racing requests exactly one
    inserts the row, and the others find it in the same transaction.
    """
    if jobs.claim_idempotency_key(
        tx, scope=claim.scope, key=claim.key, fingerprint=claim.fingerprint, job_id=job_id, now=now
    ):
        return None
    row = jobs.get_idempotency_key(tx, scope=claim.scope, key=claim.key)
    if row is None:  # the claim found it held, in this same transaction: it cannot be gone
        raise RuntimeError(f"idempotency key {claim.key!r} is neither new nor held")
    return held_job_id(claim, row)


def held_job_id(claim: IdempotencyClaim, row: Row) -> str:
    """The job a stored key names, once its fingerprint matches this request's."""
    if row["fingerprint"] != claim.fingerprint:
        raise reused_error()
    return str(row["job_id"])
