"""Circuit breakers of delivery targets: stop sending to a target that keeps not answering, probe it later.

Closed: deliveries go out. After `failures` consecutive attempts that got no answer at all (timeout,
refused or reset connection, DNS failure) the circuit opens for `open_s`, doubling with each opening
in a row up to `max_open_s`: no delivery to the target is attempted, they wait (deferred, their retry
budget untouched). When the window ends one delivery is sent as a probe (half-open, for at most
`probe_s`); an answer of any status closes the circuit, no answer opens it again for longer.

The state of a subscription's breaker lives in its row (shown by `GET /v1/subscriptions`); the per-job
callback URLs share one breaker per host and port, in the `circuits` table.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from typing import Any

from receiver.models import RowLike
from receiver.storage import subscriptions, tasks
from receiver.storage.base import Transaction

log = logging.getLogger(__name__)


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 5
    open_s: float = 30.0
    max_open_s: float = 600.0
    probe_s: float = 30.0  # how long a probe holds the half-open circuit before another may probe

    def open_for_s(self, trips: int) -> float:
        """The window of the `trips`-th opening in a row."""
        return min(self.max_open_s, self.open_s * 2.0 ** min(max(trips - 1, 0), 60))


@dataclass(frozen=True, slots=True)
class Circuit:
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0  # consecutive attempts without an answer
    trips: int = 0  # openings since the last answer
    until: float | None = None  # open: no attempt before; half-open: the probe's deadline
    last_error: str | None = None

    @classmethod
    def from_row(cls, row: RowLike | None) -> Circuit:
        if row is None:
            return cls()
        return cls(
            CircuitState(row["circuit_state"]),
            row["circuit_failures"],
            row["circuit_trips"],
            row["circuit_until"],
            row["circuit_error"],
        )

    def view(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "until": self.until if self.state is not CircuitState.CLOSED else None,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
        }

    def wait_s(self, now: float) -> float | None:
        """Seconds a delivery must wait before it may be attempted, or None when it may go now."""
        if self.state is CircuitState.CLOSED or self.until is None or self.until <= now:
            return None
        return self.until - now

    def probing(self, now: float, policy: BreakerPolicy) -> Circuit:
        """The circuit while one delivery probes the target (call only when `wait_s` is None and not closed)."""
        return replace(self, state=CircuitState.HALF_OPEN, until=now + policy.probe_s)

    def answered(self) -> Circuit:
        return Circuit()

    def unanswered(self, error: str | None, now: float, policy: BreakerPolicy) -> Circuit:
        failures = self.failures + 1
        if self.state is CircuitState.HALF_OPEN or (self.state is CircuitState.CLOSED and failures >= policy.failures):
            trips = self.trips + 1
            return Circuit(CircuitState.OPEN, failures, trips, now + policy.open_for_s(trips), error)
        return replace(self, failures=failures, last_error=error)


def load_circuit(tx: Transaction, target: str, *, subscription: bool) -> Circuit:
    return Circuit.from_row(subscriptions.get_circuit(tx, target, subscription=subscription))


def save_circuit(tx: Transaction, target: str, circuit: Circuit, *, subscription: bool, now: float) -> None:
    subscriptions.save_circuit(
        tx,
        target,
        subscription=subscription,
        state=circuit.state.value,
        failures=circuit.failures,
        trips=circuit.trips,
        until=circuit.until,
        error=circuit.last_error,
        now=now,
    )


def admit(tx: Transaction, lane: str, *, subscription: bool, now: float, policy: BreakerPolicy) -> float | None:
    """In the writer: None when a delivery in `lane` may be attempted now (as the probe, when the window
    has ended), else the seconds it must wait. Only one probe at a time: the others wait for it."""
    circuit = load_circuit(tx, lane, subscription=subscription)
    if circuit.state is CircuitState.CLOSED:
        return None
    wait_s = circuit.wait_s(now)
    if wait_s is not None:
        return wait_s
    probe = circuit.probing(now, policy)
    save_circuit(tx, lane, probe, subscription=subscription, now=now)
    _hold_lane(tx, lane, probe, now, held_until=None)
    return None


def record_attempt(
    tx: Transaction,
    lane: str,
    *,
    subscription: bool,
    answered: bool,
    error: str | None,
    now: float,
    policy: BreakerPolicy,
) -> Circuit:
    """In the writer, with the attempt's outcome: move the breaker, and hold or release the lane's queue."""
    before = load_circuit(tx, lane, subscription=subscription)
    after = before.answered() if answered else before.unanswered(error, now, policy)
    if after == before:
        return after
    save_circuit(tx, lane, after, subscription=subscription, now=now)
    if after.state is CircuitState.OPEN and before.state is not CircuitState.OPEN:
        log.warning("circuit of %s opened for %.0f s: %s", lane, (after.until or now) - now, error)
        held_until = before.until if before.state is CircuitState.HALF_OPEN else None
        _hold_lane(tx, lane, after, now, held_until=held_until)
    elif after.state is CircuitState.CLOSED and before.state is not CircuitState.CLOSED and before.until:
        log.info("circuit of %s closed: the target answered", lane)
        tasks.release_lane(tx, lane, kind="deliver", until=before.until, now=now)
    return after


def _hold_lane(tx: Transaction, lane: str, circuit: Circuit, now: float, *, held_until: float | None) -> None:
    # Park the lane's waiting deliveries in one statement, rather than claiming and deferring each one.
    tasks.hold_lane(tx, lane, kind="deliver", until=circuit.until, held_until=held_until, now=now)
