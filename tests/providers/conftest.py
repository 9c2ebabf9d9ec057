"""Fixtures of the provider tests: a provider harness on the module's served synchronous-API emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.helpers.sync_apis import Harness, Served, harness_on


@pytest_asyncio.fixture(loop_scope="module")
async def harness(served: Served) -> AsyncIterator[Harness]:
    """A provider harness on the module's `served` emulator (its module-scoped fixture), reset for the test."""
    async with harness_on(served) as harness:
        yield harness
