"""Retry policy: decides how long to wait before the next attempt, or to give up. It never sleeps."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

_DELTA_SECONDS = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


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

        A provider's `Retry-After` is a floor: we never come back sooner than it asked, except that no
        wait exceeds `max_s` (a provider cannot park a task for longer than our own cap).
        """
        if attempts >= self.max_attempts:
            return None
        exponent = max(attempts - 1, 0)
        # 2.0 ** 1024 raises OverflowError; long before that the ceiling is max_s anyway.
        ceiling = self.max_s if exponent >= 1024 else min(self.max_s, self.base_s * 2.0**exponent)
        delay = (rng or random).uniform(0, ceiling)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_s))
        return delay


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header in its delta-seconds form (HTTP dates are ignored).

    Plain ASCII digits, optionally with a decimal fraction; anything else (signs, exponents, `inf`,
    `nan`, digit separators, non-ASCII digits, a number too large for a float) gives None.
    """
    if value is None:
        return None
    text = value.strip()
    if not _DELTA_SECONDS.fullmatch(text):
        return None
    seconds = float(text)
    return seconds if math.isfinite(seconds) else None
