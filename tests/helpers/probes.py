"""Beside a `receiver serve` under hostile load: its environment, a `/healthz` probe in its own process (the one
`bench.bodies` measures with), and which of the big-input functions ran on the event loop's thread.

No figure here is a bound: how long the probe waited and how much memory the server took are benchmark
figures (`scripts/bench --bodies`, docs/benchmarks.md); the tests check that the probe kept being answered."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from bench.big_bodies import MB
from bench.probe import HealthzProbe, Probed, probed_server
from tests.helpers.processes import serve_env, tail

__all__ = [
    "MB",
    "TOKEN",
    "HealthzProbe",
    "assert_answered_throughout",
    "big_calls_on_this_thread",
    "hostile_env",
    "probed_server",
]

TOKEN = "test-token"


def hostile_env(workdir: Path, port: int) -> dict[str, str]:
    """A token-protected server whose providers are configured but unreachable (nothing leaves the host)."""
    dead = "http://127.0.0.1:1"  # privileged, outside the ephemeral range: no test binds it, connections are refused
    return serve_env(
        workdir,
        RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        RECEIVER_SECRET_KEY="test-secret",
        RECEIVER_API_TOKEN=TOKEN,
        RECEIVER_FAL_QUEUE_URL=f"{dead}/fal",
        RECEIVER_WAVESPEED_URL=f"{dead}/wavespeed",
        FAL_KEY="test-fal-key",
        WAVESPEED_API_KEY="test-wavespeed-key",
    )


def assert_answered_throughout(probed: Probed, began: float, ended: float, log_path: Path) -> None:
    """Every probe was answered 200 (`HealthzProbe.finish` fails otherwise), and some while the load was being
    handled, between `began` and `ended` (`time.monotonic()`): the server never stopped answering."""
    during = probed.answered_between(began, ended)
    assert during > 0, (f"no /healthz answer in {ended - began:.1f} s of load", tail(log_path))


@contextmanager
def big_calls_on_this_thread(functions: list[Callable[..., Any]], min_len: int) -> Iterator[list[str]]:
    """The calls of `functions` made on this thread (the event loop's) during the block whose first argument is
    longer than `min_len`, as `name(length)`: seen with a profile hook, nothing is replaced. Worker threads
    are not watched, so the work they do is not listed."""
    watched = {function.__code__: function.__qualname__ for function in functions}
    seen: list[str] = []
    previous = sys.getprofile()

    def hook(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code in watched:
            first = frame.f_locals.get(frame.f_code.co_varnames[0]) if frame.f_code.co_argcount else None
            if isinstance(first, str | bytes) and len(first) > min_len:
                seen.append(f"{watched[frame.f_code]}({len(first)})")

    sys.setprofile(hook)
    try:
        yield seen
    finally:
        sys.setprofile(previous)
