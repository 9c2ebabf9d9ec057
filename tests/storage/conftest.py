"""Storage contract fixtures: `database` is an open, migrated database of each backend, closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.storage import sqlite
from receiver.storage.base import Database

BACKENDS = ["sqlite"]  # the next backend adds its name here and a branch below


@pytest.fixture(params=BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An opened `receiver.storage.sqlite.Database` on a tmp file (one per backend), closed after."""
    db: Database = sqlite.Database(tmp_path / "receiver.db")
    await db.open()
    try:
        yield db
    finally:
        await db.close()
