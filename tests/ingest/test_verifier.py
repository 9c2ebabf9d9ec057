"""The threaded Ed25519 verifier: same answers as inline verification, in batches, never leaving a caller waiting."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.ingest.verifier import ThreadedVerifier


@pytest.fixture
def verifier() -> ThreadedVerifier:
    threaded = ThreadedVerifier()
    threaded.start()
    yield threaded  # type: ignore[misc]
    threaded.stop()


async def test_many_concurrent_checks_agree_with_the_keys(verifier: ThreadedVerifier) -> None:
    """Good signatures verify and bad ones do not, with the key anywhere in the list, under concurrency."""
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    public = [key.public_key() for key in keys]
    messages = [f"message {i}".encode() for i in range(300)]
    good = [keys[i % 3].sign(m) for i, m in enumerate(messages)]
    results = await asyncio.gather(
        *(verifier.verify_any(public, sig, m) for sig, m in zip(good, messages, strict=True)),
        *(verifier.verify_any(public, sig, m + b"!") for sig, m in zip(good, messages, strict=True)),
    )
    assert results == [True] * 300 + [False] * 300
    assert verifier.items == 600 and verifier.batches < 600  # handed over in batches


async def test_unstarted_verifier_works_inline() -> None:
    """Without its thread the verifier checks on the caller's thread, with the same answers."""
    key = Ed25519PrivateKey.generate()
    inline = ThreadedVerifier()
    assert await inline.verify_any([key.public_key()], key.sign(b"x"), b"x") is True
    assert await inline.verify_any([key.public_key()], b"\0" * 64, b"x") is False


async def test_errors_reach_the_caller(verifier: ThreadedVerifier) -> None:
    """A check that raises hands the exception to its caller instead of hanging it."""
    with pytest.raises(AttributeError):
        await verifier.verify_any([object()], b"\0" * 64, b"x")  # type: ignore[list-item]
