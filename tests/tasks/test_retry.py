"""The retry policy (a pure decision: delay or give up) and Retry-After parsing."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.tasks.retry import RetryPolicy, parse_retry_after

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 40),
    base_s=st.floats(0.001, 100.0),
    max_s=st.floats(0.001, 10_000.0),
)


def ceiling(policy: RetryPolicy, attempts: int) -> float:
    return min(policy.max_s, policy.base_s * 2.0 ** max(attempts - 1, 0))


def test_default_policy() -> None:
    """The default policy allows 8 attempts, starting at 1 s and capped at 300 s."""
    assert RetryPolicy() == RetryPolicy(max_attempts=8, base_s=1.0, max_s=300.0)


@given(policy=policies, attempts=st.integers(0, 60), seed=st.integers(0, 2**32))
def test_next_delay_within_full_jitter_bounds(policy: RetryPolicy, attempts: int, seed: int) -> None:
    """Before the budget is spent the delay lies in [0, min(max_s, base_s * 2^(n-1))]; after it, None."""
    delay = policy.next_delay(attempts, rng=random.Random(seed))
    if attempts >= policy.max_attempts:
        assert delay is None
    else:
        assert delay is not None
        assert 0 <= delay <= ceiling(policy, attempts)


@pytest.mark.parametrize(
    ("attempts", "expected_ceiling"),
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (7, 64.0)],
    ids=["zeroth", "first", "second", "third", "fifth", "seventh"],
)
def test_ceiling_doubles_per_attempt(attempts: int, expected_ceiling: float) -> None:
    """The jitter ceiling doubles with each failed attempt, starting from base_s."""
    policy = RetryPolicy(max_attempts=8, base_s=1.0, max_s=300.0)
    rng = random.Random(attempts)
    delays = [policy.next_delay(attempts, rng=rng) for _ in range(500)]
    assert all(delay is not None and 0 <= delay <= expected_ceiling for delay in delays)
    assert max(d for d in delays if d is not None) > 0.9 * expected_ceiling  # full jitter reaches the top
    assert min(d for d in delays if d is not None) < 0.1 * expected_ceiling  # ...and the bottom


def test_ceiling_is_capped_at_max() -> None:
    """However many attempts failed, no delay exceeds max_s."""
    policy = RetryPolicy(max_attempts=100, base_s=1.0, max_s=30.0)
    rng = random.Random(7)
    delays = [policy.next_delay(60, rng=rng) for _ in range(200)]
    assert all(delay is not None and 0 <= delay <= 30.0 for delay in delays)


@pytest.mark.parametrize("attempts", [1100, 5000, 10**9], ids=["1100", "5000", "billion"])
def test_huge_attempt_counts_do_not_overflow(attempts: int) -> None:
    """A generous budget with a huge attempt count still yields a delay capped at max_s (no OverflowError)."""
    policy = RetryPolicy(max_attempts=10**10, base_s=1.0, max_s=60.0)
    delay = policy.next_delay(attempts, rng=random.Random(1))
    assert delay is not None and 0 <= delay <= 60.0


@pytest.mark.parametrize("attempts", [3, 4, 100], ids=["at_max", "past_max", "far_past_max"])
def test_budget_spent_gives_none(attempts: int) -> None:
    """After `max_attempts` attempts the policy gives up, with or without a Retry-After."""
    policy = RetryPolicy(max_attempts=3)
    assert policy.next_delay(attempts) is None
    assert policy.next_delay(attempts, retry_after_s=1.0) is None


@given(policy=policies, data=st.data(), retry_after=st.floats(0, 100_000), seed=st.integers(0, 2**32))
def test_retry_after_is_a_floor_up_to_max(
    policy: RetryPolicy, data: st.DataObject, retry_after: float, seed: int
) -> None:
    """A Retry-After raises the delay to at least itself (capped at max_s), never beyond what either asks."""
    attempts = data.draw(st.integers(0, policy.max_attempts - 1), label="attempts")
    delay = policy.next_delay(attempts, retry_after_s=retry_after, rng=random.Random(seed))
    assert delay is not None
    floor = min(retry_after, policy.max_s)
    assert floor <= delay <= max(floor, ceiling(policy, attempts))


def test_retry_after_beyond_max_is_capped() -> None:
    """A provider asking for an hour gets max_s: we do not park a task beyond our own cap."""
    assert RetryPolicy(max_s=300.0).next_delay(1, retry_after_s=3600.0) == 300.0


def test_same_rng_seed_same_delay() -> None:
    """The delay comes from the rng passed in, so a seeded rng makes it reproducible."""
    policy = RetryPolicy()
    assert policy.next_delay(4, rng=random.Random(42)) == policy.next_delay(4, rng=random.Random(42))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("  7 ", 7.0),
        ("1.5", 1.5),
        (".5", 0.5),
        ("3.", 3.0),
        ("007", 7.0),
    ],
    ids=["integer", "zero", "padded", "decimal", "leading_dot", "trailing_dot", "leading_zeros"],
)
def test_parse_retry_after_numbers(header: str, expected: float) -> None:
    """Delta-seconds (and a lenient decimal form) parse to seconds."""
    assert parse_retry_after(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "-1",
        "-0.5",
        "+5",
        "soon",
        "12s",
        "1e3",
        "inf",
        "Infinity",
        "nan",
        "1_000",
        "0x10",
        "١٢",
        "9" * 400,
        "Wed, 21 Oct 2015 07:28:00 GMT",
        "Fri, 31 Dec 1999 23:59:59 GMT",
    ],
    ids=[
        "none",
        "empty",
        "blank",
        "negative",
        "negative_decimal",
        "plus_sign",
        "word",
        "unit_suffix",
        "exponent",
        "inf",
        "infinity",
        "nan",
        "underscores",
        "hex",
        "arabic_digits",
        "overflows_float",
        "http_date",
        "http_date_past",
    ],
)
def test_parse_retry_after_rejects_other_forms(header: str | None) -> None:
    """Negatives, junk, non-finite numbers and HTTP dates give None (the caller uses its own backoff)."""
    assert parse_retry_after(header) is None


@given(seconds=st.integers(0, 10**12))
def test_parse_retry_after_round_trips_integers(seconds: int) -> None:
    """Any non-negative integer written as delta-seconds parses back to itself."""
    assert parse_retry_after(str(seconds)) == float(seconds)


@given(header=st.text(max_size=30))
def test_parse_retry_after_is_none_or_finite_non_negative(header: str) -> None:
    """Whatever the header holds, the result is None or a finite number of seconds >= 0; it never raises."""
    seconds = parse_retry_after(header)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)
