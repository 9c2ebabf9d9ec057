"""Retry policy: decides how long to wait before the next attempt, or to give up. It never sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, for at most `max_attempts` attempts in all."""

    max_attempts: int = 8
    base_s: float = 1.0
    max_s: float = 300.0

    def next_delay(
        self, attempts: int, *, retry_after_s: float | None = None, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait after the `attempts`-th failed attempt, or None when the budget is spent.

        A provider's `Retry-After` is a floor: we never come back sooner than it asked.
        """
        if attempts >= self.max_attempts:
            return None
        ceiling = min(self.max_s, self.base_s * 2 ** max(attempts - 1, 0))
        delay = (rng or random).uniform(0, ceiling)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_s))
        return delay


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header in its delta-seconds form (HTTP dates are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
