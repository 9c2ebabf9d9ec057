"""Authenticated encryption of secrets at rest (AES-256-GCM), with key ids so a rotated key still opens old values.

A sealed value reads `enc:v1:<key id>:<base64url(nonce | ciphertext+tag)>`. The key is
HKDF-SHA256(server secret key, info="receiver subscription secrets v1"); the key id is a short hash of that
derived key, so it names the key without revealing anything about it. The caller's `context` (e.g. the
subscription id and field) is bound in as associated data: a value copied into another row or field no
longer opens. A value without the prefix was written before sealing existed and is returned as it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from receiver.errors import SealedSecretError

PREFIX = "enc:v1:"
INFO = b"receiver subscription secrets v1"
NONCE_BYTES = 12


def derive_key(secret_key: bytes) -> bytes:
    """The 256-bit sealing key for a server secret key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO).derive(secret_key)


def key_id(key: bytes) -> str:
    """A short public name for a derived key (12 hex digits of a hash of it)."""
    return hashlib.sha256(b"receiver key id\0" + key).hexdigest()[:12]


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


class Sealer:
    """Seals with the current key; opens values sealed with it or any of the old keys."""

    def __init__(self, secret_key: bytes, *, old_secret_keys: Sequence[bytes] = ()) -> None:
        current = derive_key(secret_key)
        self.key_id = key_id(current)
        self._current = AESGCM(current)
        self._ciphers: dict[str, AESGCM] = {}
        for old in old_secret_keys:
            derived = derive_key(old)
            self._ciphers.setdefault(key_id(derived), AESGCM(derived))
        self._ciphers[self.key_id] = self._current

    def __repr__(self) -> str:
        return f"Sealer(key_id={self.key_id!r}, keys={len(self._ciphers)})"

    def seal(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._current.encrypt(nonce, plaintext.encode(), context.encode())
        return f"{PREFIX}{self.key_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def unseal(self, stored: str, *, context: str) -> str:
        """The plaintext of `stored` (legacy plaintext comes back unchanged); SealedSecretError when no
        configured key opens it. The message names `context` and key ids, never the value."""
        if not is_sealed(stored):
            return stored
        kid, _, encoded = stored[len(PREFIX) :].partition(":")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise SealedSecretError(
                f"{context} is sealed with key id {kid}, which is neither RECEIVER_SECRET_KEY's ({self.key_id}) "
                "nor one of RECEIVER_OLD_SECRET_KEYS: add the key it was sealed with to RECEIVER_OLD_SECRET_KEYS"
            )
        try:
            raw = base64.urlsafe_b64decode(encoded.encode())
            plaintext = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except (InvalidTag, ValueError, binascii.Error):
            raise SealedSecretError(
                f"{context} does not open under key id {kid}: the stored value was altered or moved from another row"
            ) from None
        return plaintext.decode()

    def needs_reseal(self, stored: str) -> bool:
        """Whether `stored` is plaintext or sealed with an old key (the start-up sweep rewrites those)."""
        return not stored.startswith(f"{PREFIX}{self.key_id}:")
