"""Job states and ids: the monotonic state machine and time-ordered ids."""

from __future__ import annotations

import pytest

from receiver.models import STATUS_RANK, TERMINAL_STATUSES, IdFactory, JobStatus, can_move

S = JobStatus


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        pytest.param(S.PENDING, S.SUBMITTED, True, id="pending-submitted"),
        pytest.param(S.PENDING, S.SUCCEEDED, True, id="pending-succeeded-webhook-won-race"),
        pytest.param(S.SUBMITTED, S.RUNNING, True, id="submitted-running"),
        pytest.param(S.RUNNING, S.SUBMITTED, False, id="running-back-to-submitted"),
        pytest.param(S.RUNNING, S.RUNNING, False, id="same-state"),
        pytest.param(S.SUCCEEDED, S.FAILED, False, id="succeeded-is-final"),
        pytest.param(S.CANCELLED, S.SUCCEEDED, False, id="cancelled-is-final"),
        pytest.param(S.FAILED, S.CANCELLED, False, id="failed-is-final"),
    ],
)
def test_state_machine_only_moves_forward(current: JobStatus, new: JobStatus, allowed: bool) -> None:
    """A job moves only to a higher rank and never out of a terminal state."""
    assert can_move(current, new) is allowed


def test_terminal_states_share_the_top_rank() -> None:
    """Exactly succeeded, failed and cancelled are terminal, all at the top rank."""
    top = max(STATUS_RANK.values())
    assert {status for status, rank in STATUS_RANK.items() if rank == top} == TERMINAL_STATUSES


def test_ids_in_one_millisecond_still_increase() -> None:
    """Ids made in the same millisecond sort in creation order (cursor pagination relies on it)."""
    ids = IdFactory()
    made = [ids.new("job", 1_760_000_000.0) for _ in range(1000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(len(i) == len("job_") + 26 for i in made)


def test_ids_follow_time() -> None:
    """A later millisecond gives a larger id even when an earlier one had many increments."""
    ids = IdFactory()
    early = [ids.new("job", 1_760_000_000.0) for _ in range(50)]
    assert ids.new("job", 1_760_000_000.002) > early[-1]
