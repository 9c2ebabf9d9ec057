"""Fixtures of the jobs tests: stacks on a hand-moved clock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.stack import ClockedFactory, ClockedStack, open_clocked_stack


@pytest.fixture
async def clocked_stack(tmp_path: Path) -> AsyncIterator[ClockedFactory]:
    """Builds ClockedStacks (keyword arguments as `open_clocked_stack`'s: a hand-moved clock, no workers)."""
    async with contextlib.AsyncExitStack() as exits:

        async def build(**kwargs: Any) -> ClockedStack:
            stack: ClockedStack = await exits.enter_async_context(open_clocked_stack(tmp_path, **kwargs))
            return stack

        yield build
