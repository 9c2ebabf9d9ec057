"""Fixtures shared across the test folders; what they build is in tests/helpers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.storage.sqlite import Database
from tests.helpers.processes import held_port
from tests.helpers.receivers import HookReceiver
from tests.helpers.stack import Stack, StackFactory, open_stack

# PostgreSQL for any test folder: postgres_cluster (one server per pytest process), postgres_url.
pytest_plugins = ("tests.helpers.postgres",)


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under this process umask (the old one is restored after)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.fixture
def port() -> Iterator[int]:
    """A loopback port held (bound, not listening) for the test, for a server in another process to bind: no
    other process, a parallel test's included, can take it before the server starts or between a kill and a
    restart (`held_port`)."""
    with held_port() as held:
        yield held


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The stacks' database: a SQLite file in `tmp_path`; a fresh PostgreSQL database (`postgres_url`) when a
    module parametrizes this fixture indirectly with "postgres" (`tests.helpers.stack.ON_BOTH_BACKENDS`)."""
    if getattr(request, "param", "sqlite") == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'receiver.db'}"


@pytest.fixture
async def make_stack(tmp_path: Path, database_url: str) -> AsyncIterator[StackFactory]:
    """Builds Stacks (keyword arguments as `open_stack`'s) on `database_url`, all closed after the test."""
    async with contextlib.AsyncExitStack() as exits:

        async def build(**kwargs: Any) -> Stack:
            return await exits.enter_async_context(open_stack(tmp_path, **{"database_url": database_url, **kwargs}))

        yield build


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """An open database on a file in `tmp_path`, migrations applied."""
    database = Database(tmp_path / "receiver.db")
    await database.open()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def hook() -> AsyncIterator[HookReceiver]:
    """A webhook subscriber on loopback (`hook.url`) recording every delivery; answers 200 unless told."""
    async with HookReceiver().running() as receiver:
        yield receiver
