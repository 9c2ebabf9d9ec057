"""Start-up objects exempted from the garbage collector's full collections."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from receiver.support.collector import freeze_startup_objects


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process goes on collecting as before


def test_objects_alive_at_start_up_are_frozen_and_later_ones_are_collected(unfrozen: None) -> None:
    """What is alive at the call is moved out of the collector's way; a cycle made afterwards is still found."""
    frozen = freeze_startup_objects()
    assert frozen == gc.get_freeze_count() > 0
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1
    assert gc.get_freeze_count() == frozen
