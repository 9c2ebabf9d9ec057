"""A clock the test moves by hand, for code that takes one (`clock: Callable[[], float]`)."""

from __future__ import annotations

import time


class Clock:
    """Unix seconds that stand still until the test sets `now` or calls `advance`."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
